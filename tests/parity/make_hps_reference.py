"""Score a tiny random HPS v2 checkpoint with the *upstream* HPSv2 code; write JSON.

HPSv2 is not vendored: point this script at a checkout of tgxs002/HPSv2. Run it with the side venv
of `setup_side_venv.sh` (its open_clip fork imports transformers/timm APIs of that era):

    /tmp/facebench-parity-venv/bin/python tests/parity/make_hps_reference.py \
        --hps-repo /path/to/HPSv2 --out tests/parity/hps_reference.json

Upstream `hpsv2.img_score.score` builds ViT-H-14 with LAION weights (a download) before loading
the HPS checkpoint, so this script does its steps by hand with upstream's own pieces:
`image_transform(224, is_train=False, resize_longest_max=True)` (what `light_augmentation=True`
gives `preprocess_val`), the fork's `CLIP` class built from the tiny config with `output_dict=True`
and loaded with `strict=True`, its `tokenize`, and `diagonal(image_features @ text_features.T)`.
The packages' `__init__` files (which import the training and download code) are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import types
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.ml import tiny_models  # noqa: E402
from tests.parity import inputs  # noqa: E402

logger = logging.getLogger("parity")


def _package(name: str, path: Path) -> None:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hps-repo", type=Path, required=True)
    parser.add_argument("--hps-commit", default="unknown")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    _package("hpsv2", args.hps_repo / "hpsv2")
    _package("hpsv2.src", args.hps_repo / "hpsv2" / "src")
    _package("hpsv2.src.open_clip", args.hps_repo / "hpsv2" / "src" / "open_clip")
    from hpsv2.src.open_clip.model import CLIP
    from hpsv2.src.open_clip.tokenizer import tokenize
    from hpsv2.src.open_clip.transform import image_transform

    weights_dir = Path(tempfile.mkdtemp(prefix="parity-hps-"))
    checkpoint = tiny_models.write_tiny_hps(weights_dir, version="v2", seed=inputs.HPS_SEED)
    state = torch.load(checkpoint, map_location="cpu")["state_dict"]

    model = CLIP(**tiny_models.TINY_OPEN_CLIP, quick_gelu=False, output_dict=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    preprocess_val = image_transform(224, is_train=False, resize_longest_max=True)

    images = inputs.images()
    rows = []
    with torch.no_grad():
        for name, prompt in inputs.PROMPTS.items():
            image = preprocess_val(images[name]).unsqueeze(0)
            text = tokenize([prompt])
            outputs = model(image, text)
            logits = outputs["image_features"] @ outputs["text_features"].T
            score = float(torch.diagonal(logits)[0])
            rows.append(
                {
                    "image": name,
                    "prompt": prompt,
                    "tokens": text[0].tolist(),
                    "pixels_sum": float(image.double().sum()),
                    "score": score,
                }
            )
            logger.info("hps_v2 %-15s %+.6f", name, score)

    import transformers

    reference = {
        "upstream": {"tgxs002/HPSv2": args.hps_commit},
        "side_env": {"transformers": transformers.__version__, "torch": torch.__version__},
        "weights_digest": inputs.state_dict_digest(state),
        "hps_v2": rows,
    }
    args.out.write_text(json.dumps(reference, indent=1) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
