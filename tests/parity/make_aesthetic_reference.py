"""Score a tiny random aesthetic predictor with the *upstream* pipeline; write JSON.

Upstream (christophschuhmann/improved-aesthetic-predictor `simple_inference.py`) is a script, not a
library: it runs OpenAI's `clip.load("ViT-L/14")`, `encode_image`, a numpy L2 normalisation and
its MLP. This script repeats those steps with OpenAI's own `clip` package (PyPI `openai-clip`,
imported from an unpacked source folder) loading our tiny TorchScript `ViT-L-14.pt` through
`clip.load(path, device="cpu", jit=False)` (strict `build_model`), and the MLP class of
`simple_inference.py` rebuilt from its layer list (it subclasses pytorch_lightning, not needed to
infer). Run it in the side venv of `setup_side_venv.sh`:

    pip download --no-deps openai-clip==1.0.1 -d /tmp/oc && tar xzf /tmp/oc/openai-clip-1.0.1.tar.gz -C /tmp/oc
    /tmp/facebench-parity-venv/bin/python tests/parity/make_aesthetic_reference.py \
        --openai-clip-src /tmp/oc/openai-clip-1.0.1 --out tests/parity/aesthetic_reference.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.ml import tiny_models  # noqa: E402
from tests.parity import inputs  # noqa: E402

logger = logging.getLogger("parity")


def upstream_mlp(input_size: int) -> nn.Module:
    """`simple_inference.MLP.layers` (ReLUs commented out upstream)."""
    module = nn.Module()
    module.layers = nn.Sequential(
        nn.Linear(input_size, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )
    module.forward = lambda x: module.layers(x)
    return module


def normalized(a: np.ndarray, axis: int = -1, order: int = 2) -> np.ndarray:
    # simple_inference.normalized
    l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, axis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openai-clip-src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(args.openai_clip_src))
    import clip

    weights_dir = Path(tempfile.mkdtemp(prefix="parity-aesthetic-"))
    clip_file, head_file = tiny_models.write_tiny_aesthetic(
        weights_dir, seed=inputs.AESTHETIC_SEED, openai_torchscript=True
    )
    model2, preprocess = clip.load(str(clip_file), device="cpu", jit=False)
    model = upstream_mlp(tiny_models.TINY_OPENAI_CLIP["embed_dim"])
    model.load_state_dict(torch.load(head_file, map_location="cpu"), strict=True)
    model.eval()

    images = inputs.images()
    rows = []
    with torch.no_grad():
        for name in inputs.PROMPTS:
            image = preprocess(images[name]).unsqueeze(0)
            image_features = model2.encode_image(image)
            im_emb_arr = normalized(image_features.cpu().detach().numpy())
            prediction = model(torch.from_numpy(im_emb_arr).float())
            rows.append({"image": name, "score": float(prediction[0, 0])})
            logger.info("aesthetic %-15s %+.6f", name, rows[-1]["score"])

    reference = {
        "upstream": {
            "christophschuhmann/improved-aesthetic-predictor": "simple_inference.py",
            "openai-clip": "1.0.1",
        },
        "weights_digest": {
            "clip": inputs.state_dict_digest(
                tiny_models.tiny_open_clip_state_dict(
                    inputs.AESTHETIC_SEED, quick_gelu=True, config=tiny_models.TINY_OPENAI_CLIP
                )
            ),
            "head": inputs.state_dict_digest(torch.load(head_file, map_location="cpu")),
        },
        "aesthetic": rows,
    }
    args.out.write_text(json.dumps(reference, indent=1) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
