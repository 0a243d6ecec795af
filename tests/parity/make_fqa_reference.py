"""Score tiny random MagFace / CR-FIQA checkpoints with the *upstream* code; write JSON.

Both upstream backbones are plain torch files, so this runs in the project venv. Point it at
checkouts of IrvingMeng/MagFace and fdbtrs/CR-FIQA:

    .venv/bin/python tests/parity/make_fqa_reference.py --magface-repo PATH --cr-fiqa-repo PATH \
        --out tests/parity/fqa_reference.json

Upstream pieces used as they are: MagFace `models/iresnet.py` (`IResNet`, `IBasicBlock`) loaded
through `inference/network_inf.py`'s `clean_dict_inf` (its `termcolor` import is stubbed) and its
preprocessing (cv2 BGR → ToTensor → Normalize(0, 1)) with quality = ‖feature‖; CR-FIQA
`backbones/iresnet.py` (`IResNet(..., qs=1)`, `load_state_dict` strict) with `QualityModel`'s
`div(255).sub(0.5).div(0.5)` on RGB crops (its README). Only depth and the embedding size are
tiny (upstream hard-codes the stage widths, which are kept).
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
from torchvision import transforms

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.ml import tiny_models  # noqa: E402
from tests.parity import inputs  # noqa: E402

logger = logging.getLogger("parity")


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--magface-repo", type=Path, required=True)
    parser.add_argument("--cr-fiqa-repo", type=Path, required=True)
    parser.add_argument("--magface-commit", default="unknown")
    parser.add_argument("--cr-fiqa-commit", default="unknown")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    termcolor = types.ModuleType("termcolor")
    termcolor.cprint = lambda *a, **k: None
    sys.modules["termcolor"] = termcolor
    sys.path.insert(0, str(args.magface_repo))
    mag_iresnet = _load(args.magface_repo / "models" / "iresnet.py", "models.iresnet")
    network_inf = _load(args.magface_repo / "inference" / "network_inf.py", "network_inf")
    cr_iresnet = _load(args.cr_fiqa_repo / "backbones" / "iresnet.py", "cr_fiqa_iresnet")

    weights_dir = Path(tempfile.mkdtemp(prefix="parity-fqa-"))
    mag_file = tiny_models.write_tiny_magface(weights_dir, seed=inputs.MAGFACE_SEED)
    cr_file = tiny_models.write_tiny_cr_fiqa(weights_dir, seed=inputs.CR_FIQA_SEED)
    layers = tiny_models.TINY_IRESNET["layers"]
    num_features = tiny_models.TINY_IRESNET["num_features"]

    # MagFace: NetworkBuilder_inf's layout (`features` = the iResNet) and its key cleaning.
    magface = torch.nn.Module()
    magface.features = mag_iresnet.IResNet(
        mag_iresnet.IBasicBlock, layers, num_classes=num_features
    )
    raw = torch.load(mag_file, map_location="cpu")["state_dict"]
    magface.load_state_dict(network_inf.clean_dict_inf(magface, raw), strict=True)
    magface.eval()
    mag_transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])]
    )

    cr_fiqa = cr_iresnet.IResNet(cr_iresnet.IBasicBlock, layers, num_features=num_features, qs=1)
    cr_fiqa.load_state_dict(torch.load(cr_file, map_location="cpu"), strict=True)
    cr_fiqa.eval()

    images = inputs.images()
    rows = []
    with torch.no_grad():
        for name, box in inputs.FQA_CROPS.items():
            # Crops are 112×112 already, as aligned inputs are; RGB uint8.
            rgb = np.asarray(images[name].convert("RGB").crop(box))
            bgr = rgb[..., ::-1].copy()  # what cv2.imread gives
            magnitude = float(magface.features(mag_transform(bgr)[None]).norm(dim=1)[0])
            blob = torch.Tensor(np.transpose(rgb, (2, 0, 1))[None].copy())
            blob.div_(255).sub_(0.5).div_(0.5)
            _, quality = cr_fiqa(blob)
            rows.append(
                {
                    "image": name,
                    "box": list(box),
                    "magface": magnitude,
                    "cr_fiqa": float(quality[0, 0]),
                }
            )
            logger.info(
                "fqa %-10s magface %.6f cr_fiqa %+.6f", name, magnitude, rows[-1]["cr_fiqa"]
            )

    reference = {
        "upstream": {
            "IrvingMeng/MagFace": args.magface_commit,
            "fdbtrs/CR-FIQA": args.cr_fiqa_commit,
        },
        "weights_digest": {
            "magface": inputs.state_dict_digest(raw),
            "cr_fiqa": inputs.state_dict_digest(torch.load(cr_file, map_location="cpu")),
        },
        "faces": rows,
    }
    args.out.write_text(json.dumps(reference, indent=1) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
