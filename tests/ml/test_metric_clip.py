"""HPS v2 / v2.1 and the LAION aesthetic predictor on tiny open_clip models in official formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision import transforms

from ml import metrics
from ml.metrics import CheckpointMismatch, MetricUnavailable
from ml.metrics.preprocess import CLIP_MEAN, CLIP_STD, clip_center_crop, hps_letterbox
from tests.ml import tiny_models


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    tiny_models.write_tiny_hps(root, version="v2", seed=2)
    tiny_models.write_tiny_hps(root, version="v2.1", seed=4)
    tiny_models.write_tiny_aesthetic(root)
    return root


@pytest.fixture(scope="module")
def hps(weights_dir: Path) -> metrics.Metric:
    return metrics.create("hps_v2", weights_dir=weights_dir)


@pytest.fixture(scope="module")
def aesthetic(weights_dir: Path) -> metrics.Metric:
    return metrics.create("aesthetic", weights_dir=weights_dir)


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [
        Image.fromarray(skdata.astronaut()),
        Image.fromarray(skdata.camera()),
        Image.fromarray(rng.integers(0, 256, (300, 180, 3), dtype=np.uint8)),
        Image.fromarray(skdata.astronaut()).resize((224, 100)),  # longer side already 224
    ]


PROMPTS = ["an astronaut in a white suit", "a camera man", "noise", "a wide photo"]


# --- HPS ---------------------------------------------------------------------------------------


def _upstream_hps_val_transform(image: Image.Image) -> torch.Tensor:
    """HPSv2 `image_transform(224, is_train=False, resize_longest_max=True)`, from its description:
    RGB, to tensor, bicubic resize of the longer side to 224 with round(), zero pad, normalise."""
    tensor = transforms.ToTensor()(image.convert("RGB"))
    height, width = tensor.shape[1:]
    scale = 224 / max(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    if scale != 1.0:
        tensor = transforms.Resize((new_h, new_w), transforms.InterpolationMode.BICUBIC)(tensor)
    pad_h, pad_w = 224 - new_h, 224 - new_w
    tensor = transforms.Pad([pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2])(
        tensor
    )
    return transforms.Normalize(CLIP_MEAN, CLIP_STD)(tensor)


@pytest.mark.parametrize("photo_index", range(4))
def test_hps_preprocessing_is_upstreams_letterbox(photo_index: int):
    photo = _photos()[photo_index]
    ours = hps_letterbox(photo)
    assert ours.shape == (3, 224, 224)
    torch.testing.assert_close(ours, _upstream_hps_val_transform(photo), atol=0, rtol=0)


def test_hps_letterbox_pads_the_short_side_with_black():
    wide = Image.new("RGB", (448, 224), (255, 255, 255))
    pixels = hps_letterbox(wide)
    black = (torch.zeros(3) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[:, :56, :], black[:, None, None].expand(3, 56, 224))
    torch.testing.assert_close(
        pixels[:, 56:168, :].mean(dim=(1, 2)),
        (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD),
        atol=1e-3,
        rtol=0,
    )


def test_hps_score_is_the_cosine_of_open_clip_features(hps):
    photos = _photos()
    tokens = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)
    assert torch.equal(tokens, hps.tokenizer(PROMPTS))
    with torch.inference_mode():
        # upstream: outputs = model(image, text); diagonal(image_features @ text_features.T)
        outputs = hps.model(torch.stack([_upstream_hps_val_transform(p) for p in photos]), tokens)
        image_features, text_features = outputs[0], outputs[1]
        expected = torch.diagonal(image_features @ text_features.T)

    scores = hps.score(list(zip(photos, PROMPTS, strict=True)))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert scores.abs().max() <= 1.0  # a cosine, no ×100
    assert scores.std() > 1e-4


def test_hps_batched_scores_equal_one_at_a_time_scores(hps):
    batch = list(zip(_photos(), PROMPTS, strict=True))
    single = torch.cat([hps.score([item]) for item in batch])
    torch.testing.assert_close(hps.score(batch), single, atol=1e-5, rtol=0)


def test_hps_versions_are_distinct_metrics(weights_dir: Path, hps):
    hps21 = metrics.create("hps_v2.1", weights_dir=weights_dir)
    batch = [(_photos()[0], PROMPTS[0])]
    assert hps21.version != hps.version
    assert not torch.allclose(hps21.score(batch), hps.score(batch))


def test_hps_checkpoint_without_state_dict_entry_is_rejected(weights_dir: Path, tmp_path: Path):
    folder = tmp_path / "HPSv2"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes(
        (weights_dir / "HPSv2" / "open_clip_config.json").read_bytes()
    )
    torch.save(
        tiny_models.tiny_open_clip_state_dict(0, quick_gelu=False), folder / "HPS_v2_compressed.pt"
    )
    with pytest.raises(CheckpointMismatch, match="no 'state_dict' entry"):
        metrics.create("hps_v2", weights_dir=tmp_path)


def test_hps_checkpoint_with_a_missing_key_is_rejected(weights_dir: Path, tmp_path: Path):
    folder = tmp_path / "HPSv2"
    folder.mkdir()
    (folder / "open_clip_config.json").write_bytes(
        (weights_dir / "HPSv2" / "open_clip_config.json").read_bytes()
    )
    state = tiny_models.tiny_open_clip_state_dict(0, quick_gelu=False)
    del state["visual.proj"]
    torch.save({"state_dict": state}, folder / "HPS_v2_compressed.pt")
    with pytest.raises(CheckpointMismatch, match="1 missing key: visual.proj"):
        metrics.create("hps_v2", weights_dir=tmp_path)


# --- aesthetic ---------------------------------------------------------------------------------


def test_aesthetic_is_the_mlp_of_the_normalised_clip_image_embedding(aesthetic):
    photos = _photos()
    with torch.inference_mode():
        embeddings = aesthetic.visual(torch.stack([clip_center_crop(p) for p in photos]))
        # upstream normalises in numpy: a / ||a||_2 per row
        normalised = embeddings / embeddings.norm(dim=-1, keepdim=True)
        expected = aesthetic.head(normalised).squeeze(-1)

    scores = aesthetic.score(photos)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    single = torch.cat([aesthetic.score([photo]) for photo in photos])
    torch.testing.assert_close(scores, single, atol=1e-5, rtol=0)
    assert scores.std() > 1e-4


def test_aesthetic_uses_quick_gelu_for_openai_weights(aesthetic):
    block = aesthetic.visual.transformer.resblocks[0]
    assert isinstance(block.mlp.gelu, open_clip.transformer.QuickGELU)


def test_aesthetic_head_keys_are_the_upstream_ones(aesthetic):
    assert sorted(aesthetic.head.state_dict()) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )


def test_aesthetic_ignores_prompts_and_scores_face_crops_too(weights_dir: Path, aesthetic):
    photo = _photos()[0]
    face_variant = metrics.create("aesthetic_face", weights_dir=weights_dir)
    assert face_variant.level == "face"
    torch.testing.assert_close(
        aesthetic.score([(photo, "any prompt")]), face_variant.score([photo])
    )


def test_aesthetic_without_the_clip_tower_is_unavailable(tmp_path: Path):
    tiny_models.write_tiny_aesthetic(tmp_path)
    (tmp_path / "CLIP" / "ViT-L-14.pt").unlink()
    with pytest.raises(MetricUnavailable, match=r"CLIP/ViT-L-14\.pt"):
        metrics.create("aesthetic", weights_dir=tmp_path)


def test_aesthetic_reads_openais_torchscript_clip_archive(tmp_path: Path, aesthetic):
    tiny_models.write_tiny_aesthetic(tmp_path, openai_torchscript=True)
    from_archive = metrics.create("aesthetic", weights_dir=tmp_path)
    photos = _photos()[:2]
    # Same seed; the archive holds the weights in fp16 as OpenAI's does, hence the tolerance.
    torch.testing.assert_close(
        from_archive.score(photos), aesthetic.score(photos), atol=2e-3, rtol=0
    )


@pytest.mark.parametrize("openai_torchscript", [False, True])
def test_aesthetic_with_a_truncated_clip_file_says_so(tmp_path: Path, openai_torchscript: bool):
    clip_file, _ = tiny_models.write_tiny_aesthetic(tmp_path, openai_torchscript=openai_torchscript)
    clip_file.write_bytes(clip_file.read_bytes()[:5000])
    with pytest.raises(CheckpointMismatch, match="truncated or corrupt"):
        metrics.create("aesthetic", weights_dir=tmp_path)


def test_aesthetic_head_for_another_embedding_size_is_rejected(tmp_path: Path):
    _, head_file = tiny_models.write_tiny_aesthetic(tmp_path)
    torch.save(tiny_models.aesthetic_head_state_dict(0, 768), head_file)
    with pytest.raises(CheckpointMismatch, match="expects 768-d CLIP embeddings"):
        metrics.create("aesthetic", weights_dir=tmp_path)


@pytest.mark.parametrize("name", ["hps_v2", "aesthetic"])
def test_half_precision_autocast_runs_and_stays_close(weights_dir: Path, name: str):
    exact = metrics.create(name, weights_dir=weights_dir)
    half = metrics.create(name, weights_dir=weights_dir, dtype="bfloat16")
    batch = list(zip(_photos(), PROMPTS, strict=True))
    scores = half.score(batch)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, exact.score(batch), atol=0.05, rtol=0.05)
