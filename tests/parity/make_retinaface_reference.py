"""Detect faces with *upstream* batch-face RetinaFace on the tiny random checkpoint; write JSON.

batch-face's detector (`batch_face/face_detection/alignment.py`) imports only torch,
torchvision, numpy and cv2, so this runs in the project venv. Point it at a checkout of
elliottzheng/batch-face:

    .venv/bin/python tests/parity/make_retinaface_reference.py --batch-face-repo PATH \
        --batch-face-commit SHA --out tests/parity/retinaface_reference.json

Upstream pieces used as they are: `load_net(path, cpu, "mobilenet")` (its `RetinaFace`,
`cfg_mnet`, `load_model`), then `batch_detect` the way the official FaceScore calls it:
`cv2.imread`-style BGR input, one image at a time, `cv=False`. The same network is also loaded
with `load_state_dict(strict=True)` to prove the tiny checkpoint has exactly upstream's keys.
Cases: three photos that ship in wheels at full size, and one with `max_size` (upstream's
`resize` path, which the FaceScore call does not take).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests import images  # noqa: E402
from tests.ml import tiny_models  # noqa: E402
from tests.parity import inputs  # noqa: E402

logger = logging.getLogger("parity")

RETINAFACE_SEED = 0
THRESHOLD = 0.9
# (name of the case, photo function in tests.images, max_size or -1 for none)
CASES = [
    ("astronaut", "astronaut", -1),
    ("grace_hopper", "grace_hopper", -1),
    ("camera", "camera", -1),
    ("astronaut_max_size_256", "astronaut", 256),
]


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-face-repo", type=Path, required=True)
    parser.add_argument("--batch-face-commit", default="unknown")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    alignment = _load(
        args.batch_face_repo / "batch_face" / "face_detection" / "alignment.py",
        "batch_face_alignment",
    )
    weights_dir = Path(tempfile.mkdtemp(prefix="parity-retinaface-"))
    checkpoint = tiny_models.write_tiny_retinaface(weights_dir, seed=RETINAFACE_SEED)
    device = torch.device("cpu")
    net = alignment.load_net(str(checkpoint), device, "mobilenet")
    net.load_state_dict(torch.load(checkpoint, map_location="cpu"), strict=True)

    cases = []
    for case, photo, max_size in CASES:
        rgb = getattr(images, photo)()
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # what cv2.imread gives FaceScore
        (faces,) = alignment.batch_detect(
            net, [bgr], device, threshold=THRESHOLD, cv=False, max_size=max_size
        )
        cases.append(
            {
                "case": case,
                "image": photo,
                "max_size": None if max_size == -1 else max_size,
                # 1e-4 px and 1e-7 in score are far below what the comparison tolerates.
                "boxes": [[round(float(v), 4) for v in box] for box, _, _ in faces],
                "scores": [round(float(score), 7) for _, _, score in faces],
                "landmarks": [
                    [[round(float(v), 4) for v in point] for point in points]
                    for _, points, _ in faces
                ],
            }
        )
        logger.info("%s: %d faces", case, len(faces))
    reference = {
        "upstream": {"elliottzheng/batch-face": args.batch_face_commit},
        "weights_digest": inputs.state_dict_digest(torch.load(checkpoint, weights_only=True)),
        "seed": RETINAFACE_SEED,
        "threshold": THRESHOLD,
        "cases": cases,
    }
    # One line per case keeps the file small and its diffs readable.
    text = json.dumps(reference, indent=1)
    for case in cases:
        text = text.replace(json.dumps(case, indent=1).replace("\n", "\n  "), json.dumps(case), 1)
    args.out.write_text(text + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
