"""Loading Stable Diffusion pipelines from local folders and single files, on tiny random models."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ml.sd import ModelUnavailable, describe_model, inspect_model, load_pipeline
from tests.ml.tiny_sd import TINY_IMAGE_PX, write_tiny_sd, write_tiny_sdxl


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    return {
        "text2img": write_tiny_sd(root / "text2img"),
        "inpaint": write_tiny_sd(root / "inpaint", inpaint=True),
        "v_prediction": write_tiny_sd(root / "vpred", prediction_type="v_prediction"),
    }


def _text2img(pipeline, seed: int = 0) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.inference_mode():
        output = pipeline(
            prompt="a photo of a face",
            num_inference_steps=2,
            height=TINY_IMAGE_PX,
            width=TINY_IMAGE_PX,
            generator=generator,
            output_type="np",
        )
    return output.images[0]


# --- an original-layout (LDM) checkpoint written from a diffusers pipeline ---------------------
# The inverse of the key renames diffusers' single-file loader applies, for the SD 1.5 layout, so
# a single-file round trip can be tested without downloading a real checkpoint.

_RESNET_TO_LDM = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]


def _unet_key_to_ldm(key: str, layers_per_block: int, up_has_attention: list[bool]) -> str:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]  # diffusers name → LDM name
    if key in top:
        return top[key]
    n = layers_per_block + 1

    def resnet(rest: str) -> str:
        for new, old in _RESNET_TO_LDM:
            rest = rest.replace(f"{new}.", f"{old}.", 1) if rest.startswith(new) else rest
        return rest

    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        b, j, rest = int(m[1]), int(m[2]), m[3]
        return f"input_blocks.{1 + b * n + j}.0.{resnet(rest)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.0.{resnet(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        return f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        return f"output_blocks.{b * n + layers_per_block}.{2 if up_has_attention[b] else 1}.conv.{m[2]}"
    raise AssertionError(f"no LDM name for UNet key {key}")


def _vae_key_to_ldm(key: str, num_up_blocks: int) -> str:
    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut", "nin_shortcut")

    attention = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ]
    renames = {
        "encoder.conv_norm_out": "encoder.norm_out",
        "decoder.conv_norm_out": "decoder.norm_out",
    }
    for new, old in renames.items():
        if key.startswith(new):
            return old + key[len(new) :]
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        rest = m[2]
        for new, old in attention:
            if rest.startswith(new):
                rest = old + rest[len(new) :]
        return f"{m[1]}.mid.attn_1.{rest}"
    return key  # conv_in/conv_out/quant_conv/post_quant_conv keep their names


def write_original_checkpoint(folder: Path, target: Path) -> Path:
    """The tiny diffusers pipeline at ``folder`` as one SD 1.5-layout .safetensors file."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    unet_config = pipeline.unet.config
    up_has_attention = ["CrossAttn" in name for name in unet_config.up_block_types]
    tensors: dict[str, torch.Tensor] = {}
    for key, value in pipeline.unet.state_dict().items():
        ldm = _unet_key_to_ldm(key, unet_config.layers_per_block, up_has_attention)
        tensors[f"model.diffusion_model.{ldm}"] = value
    num_up = len(pipeline.vae.config.up_block_types)
    for key, value in pipeline.vae.state_dict().items():
        tensors[f"first_stage_model.{_vae_key_to_ldm(key, num_up)}"] = value
    for key, value in pipeline.text_encoder.state_dict().items():
        # original checkpoints name the OpenAI CLIP text model's keys "text_model.…" (transformers 5
        # drops that prefix from CLIPTextModel's own state dict)
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        tensors[f"cond_stage_model.transformer.{key}"] = value
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target))
    return target


# --- folders --------------------------------------------------------------------------------


def test_text2img_folder_loads_without_safety_checker_or_progress_bars(models):
    pipeline = load_pipeline(models["text2img"], task="text2img", device="cpu")

    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    assert pipeline.safety_checker is None
    assert pipeline._progress_bar_config == {"disable": True}
    assert pipeline.unet.dtype == torch.float32  # fp32 on the CPU
    assert _text2img(pipeline).shape == (TINY_IMAGE_PX, TINY_IMAGE_PX, 3)


def test_inpaint_folder_loads_as_an_inpainting_pipeline(models):
    pipeline = load_pipeline(models["inpaint"], task="inpaint", device="cpu", dtype="bf16")

    assert type(pipeline).__name__ == "StableDiffusionInpaintPipeline"
    assert pipeline.unet.config.in_channels == 9
    assert pipeline.unet.dtype == torch.bfloat16  # an explicit dtype wins over the CPU default


def test_inpaint_task_refuses_a_text2img_model_naming_its_channel_count(models):
    with pytest.raises(
        ModelUnavailable, match=r"4 input channels.*needs .*9.*generation \(text2img\) only"
    ):
        load_pipeline(models["text2img"], task="inpaint", device="cpu")


def test_text2img_task_refuses_an_inpainting_model(models):
    with pytest.raises(ModelUnavailable, match=r"9 input channels.*pair crafting \(inpaint\) only"):
        load_pipeline(models["inpaint"], task="text2img", device="cpu")


def test_missing_path_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match=r"does not exist"):
        load_pipeline(tmp_path / "nowhere", task="text2img", device="cpu")


def test_folder_without_model_index_is_not_a_diffusers_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(
        ModelUnavailable, match=r"not a diffusers model folder: it has no model_index.json"
    ):
        load_pipeline(tmp_path, task="text2img", device="cpu")


def test_folder_with_a_damaged_weight_file_is_unavailable(models, tmp_path):
    import shutil

    broken = shutil.copytree(models["text2img"], tmp_path / "broken")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelUnavailable, match=r"cannot load .*broken as a sd15 text2img pipeline"):
        load_pipeline(broken, task="text2img", device="cpu")


def test_unknown_file_type_is_unavailable(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(
        ModelUnavailable, match=r"neither a diffusers folder nor a .safetensors/.ckpt"
    ):
        load_pipeline(path, task="text2img", device="cpu")


# --- single files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_file(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_original_checkpoint(
        models["text2img"], tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors"
    )


def test_single_file_loads_with_a_config_folder_and_draws_what_the_folder_draws(
    models, single_file
):
    from_folder = load_pipeline(models["text2img"], task="text2img", device="cpu")
    from_file = load_pipeline(single_file, task="text2img", device="cpu", config=models["text2img"])

    assert type(from_file).__name__ == "StableDiffusionPipeline"
    assert from_file.safety_checker is None
    np.testing.assert_array_equal(_text2img(from_file, seed=3), _text2img(from_folder, seed=3))


def test_ckpt_single_file_loads_like_the_safetensors_one(models, single_file, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny-sd15.ckpt"
    torch.save({"state_dict": load_file(str(single_file)), "global_step": 10}, ckpt)
    from_ckpt = load_pipeline(ckpt, task="text2img", device="cpu", config=models["text2img"])
    from_folder = load_pipeline(models["text2img"], task="text2img", device="cpu")

    np.testing.assert_array_equal(_text2img(from_ckpt, seed=5), _text2img(from_folder, seed=5))


class _Pickled:  # stands for the training callbacks some old .ckpt files pickle
    pass


def test_ckpt_that_pickles_objects_is_refused_without_unpickling_them(models, tmp_path):
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "callbacks": _Pickled()}, ckpt)
    with pytest.raises(ModelUnavailable, match=r"convert it to .safetensors"):
        load_pipeline(ckpt, task="text2img", device="cpu", config=models["text2img"])


def test_single_file_without_a_config_folder_is_refused(single_file):
    with pytest.raises(
        ModelUnavailable, match=r"single checkpoint file without configs; give config="
    ):
        load_pipeline(single_file, task="text2img", device="cpu")


def test_single_file_with_an_inpainting_config_folder_is_refused(models, single_file):
    # the file is text-to-image (4 channels): asking for inpainting names the channels first
    with pytest.raises(ModelUnavailable, match=r"4 input channels"):
        load_pipeline(single_file, task="inpaint", device="cpu", config=models["inpaint"])
    with pytest.raises(
        ModelUnavailable, match=r"config folder .* has a 9-channel UNet but .* a 4-channel"
    ):
        load_pipeline(single_file, task="text2img", device="cpu", config=models["inpaint"])


@pytest.mark.parametrize(
    "content",
    [b"this is not a checkpoint at all", b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}"],
    ids=["garbage", "bad-header"],
)
def test_corrupt_safetensors_file_is_unavailable(models, tmp_path, content):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelUnavailable, match=r"not a readable .safetensors checkpoint \(corrupt"):
        load_pipeline(path, task="text2img", device="cpu", config=models["text2img"])


def test_truncated_single_file_is_unavailable(models, single_file, tmp_path):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(single_file.read_bytes()[: single_file.stat().st_size // 2])
    with pytest.raises(ModelUnavailable, match=r"truncated"):
        load_pipeline(path, task="text2img", device="cpu", config=models["text2img"])


def test_safetensors_file_in_diffusers_layout_is_not_an_original_checkpoint(models):
    unet_file = models["text2img"] / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(
        ModelUnavailable, match=r"not a Stable Diffusion checkpoint in the original layout"
    ):
        load_pipeline(unet_file, task="text2img", device="cpu", config=models["text2img"])


# --- LoRA -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_folder(models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionPipeline.from_pretrained(models["text2img"], local_files_only=True)
    torch.manual_seed(0)
    # init_lora_weights=False draws B at random too, so the adapter changes the output at once
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    pipeline.unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet))
    assert any(v.abs().sum() > 0 for k, v in layers.items() if "lora_B" in k or "lora.up" in k)
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers, safe_serialization=True
    )
    return folder


def test_lora_from_a_folder_or_its_file_changes_the_output_the_same_way(models, lora_folder):
    base = _text2img(load_pipeline(models["text2img"], task="text2img", device="cpu"))
    with_folder = _text2img(
        load_pipeline(models["text2img"], task="text2img", device="cpu", lora=lora_folder)
    )
    lora_file = lora_folder / "pytorch_lora_weights.safetensors"
    with_file = _text2img(
        load_pipeline(models["text2img"], task="text2img", device="cpu", lora=lora_file)
    )

    assert np.abs(with_folder - base).max() > 1e-3
    np.testing.assert_array_equal(with_folder, with_file)


def test_lora_that_is_not_a_lora_is_unavailable(models, tmp_path):
    bogus = tmp_path / "bogus.safetensors"
    save_file({"not.a.lora.weight": torch.zeros(2, 2)}, str(bogus))
    with pytest.raises(ModelUnavailable, match=r"cannot apply LoRA .*bogus.safetensors"):
        load_pipeline(models["text2img"], task="text2img", device="cpu", lora=bogus)


def test_missing_lora_is_unavailable(models, tmp_path):
    with pytest.raises(ModelUnavailable, match=r"LoRA path .* does not exist"):
        load_pipeline(models["text2img"], task="text2img", device="cpu", lora=tmp_path / "none")


# --- provenance -----------------------------------------------------------------------------


def test_describe_model_of_a_folder_hashes_its_weight_files(models):
    folder = models["v_prediction"]
    description = describe_model(folder)

    files = sorted(p for p in folder.rglob("*.safetensors"))
    expected_files = {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }
    listing = "".join(f"{name} {digest}\n" for name, digest in sorted(expected_files.items()))
    assert description == {
        "path": str(folder),
        "kind": "folder",
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "files": expected_files,
        "architecture": "sd15",
        "task": "text2img",
        "in_channels": 4,
        "prediction_type": "v_prediction",
    }
    json.dumps(description)  # JSON-safe for the job's provenance


def test_describe_model_of_a_single_file_hashes_the_file(models, single_file):
    description = describe_model(single_file, config=models["text2img"])

    assert description["kind"] == "single_file"
    assert description["sha256"] == hashlib.sha256(single_file.read_bytes()).hexdigest()
    assert description["architecture"] == "sd15"
    assert description["prediction_type"] == "epsilon"
    # without a config, what the file alone says: no prediction type is stored in it
    assert describe_model(single_file)["prediction_type"] is None


def test_sdxl_is_recognised_from_its_unet_config(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionXLPipeline",
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            }
        )
    )
    (tmp_path / "unet" / "config.json").write_text(
        json.dumps(
            {"in_channels": 9, "cross_attention_dim": 2048, "addition_embed_type": "text_time"}
        )
    )
    info = inspect_model(tmp_path)

    assert info["architecture"] == "sdxl"
    assert info["in_channels"] == 9
    assert info["prediction_type"] == "epsilon"  # no scheduler config: the diffusers default


def test_an_image_is_not_mistaken_for_a_model(tmp_path):
    path = tmp_path / "face.safetensors"
    Image.new("RGB", (8, 8)).save(path, "PNG")
    with pytest.raises(ModelUnavailable, match=r"corrupt"):
        inspect_model(path)


# --- SDXL -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sdxl")
    return {
        "text2img": write_tiny_sdxl(root / "text2img"),
        "inpaint": write_tiny_sdxl(root / "inpaint", inpaint=True),
    }


def test_sdxl_folders_load_as_sdxl_pipelines_for_each_task(sdxl_models):
    text2img = load_pipeline(sdxl_models["text2img"], task="text2img", device="cpu")
    inpaint = load_pipeline(sdxl_models["inpaint"], task="inpaint", device="cpu")

    assert type(text2img).__name__ == "StableDiffusionXLPipeline"
    assert type(inpaint).__name__ == "StableDiffusionXLInpaintPipeline"
    assert describe_model(sdxl_models["inpaint"])["architecture"] == "sdxl"
    assert _text2img(text2img).shape == (TINY_IMAGE_PX, TINY_IMAGE_PX, 3)
    with pytest.raises(ModelUnavailable, match=r"4 input channels"):
        load_pipeline(sdxl_models["text2img"], task="inpaint", device="cpu")


def test_sdxl_inpainting_crafts_a_pair_that_differs_only_inside_the_mask(sdxl_models):
    from ml.pairs import CraftSettings, MaskSettings, PairSource, craft_pairs, plan_pairs
    from tests.images import astronaut

    pipeline = load_pipeline(sdxl_models["inpaint"], task="inpaint", device="cpu")
    photo = Image.fromarray(astronaut()).resize((128, 128))
    settings = CraftSettings(
        model=str(sdxl_models["inpaint"]),
        steps=2,
        resolution=TINY_IMAGE_PX,
        mask=MaskSettings(min_face_px=16),
    )
    tasks, _ = plan_pairs(
        [PairSource("file:astronaut.png", photo, [((44, 16, 68, 42), 0.99)])], settings
    )
    (pair,) = craft_pairs(pipeline, tasks, settings)

    good, bad, mask = np.asarray(pair.good), np.asarray(pair.bad), np.asarray(pair.mask)
    np.testing.assert_array_equal(bad[mask == 0], good[mask == 0])
    assert np.abs(bad[mask == 255].astype(int) - good[mask == 255].astype(int)).mean() > 5
