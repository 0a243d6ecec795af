"""ImageReward and Face Score on tiny random checkpoints in the official formats."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision import transforms

from ml import metrics
from ml.metrics import CheckpointMismatch, FaceCrop
from ml.metrics.blip import TextConfig, VisionConfig
from ml.metrics.imagereward import (
    IMAGE_REWARD_MEAN,
    IMAGE_REWARD_STD,
    ImageRewardModel,
    aggregate_faces,
    aggregate_images,
    crop_face,
    face_crops,
    preprocess_image,
    tokenize,
)
from tests.ml import tiny_models

PROMPTS = [
    "a photo of an astronaut",
    "a red cat",
    "portrait of a smiling old man with a blue dog, close up, in the photo of the young woman "
    "and the person on the portrait with a cat and a dog and a man",  # > 35 tokens: truncated
    "a face.",
]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    tiny_models.write_tiny_imagereward(root)
    tiny_models.write_tiny_face_score(root)
    return root


@pytest.fixture(scope="module")
def image_reward(weights_dir: Path) -> metrics.Metric:
    return metrics.create("imagereward", weights_dir=weights_dir)


@pytest.fixture(scope="module")
def face_score(weights_dir: Path) -> metrics.Metric:
    return metrics.create("face_score", weights_dir=weights_dir)


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    return [
        Image.fromarray(skdata.astronaut()),
        Image.fromarray(skdata.camera()),  # greyscale: converted to RGB, as upstream does
        noise,
        Image.fromarray(skdata.astronaut()).resize((150, 400)),
    ]


def _official_transform() -> transforms.Compose:
    # Upstream ImageReward.py `_transform(224)`, rebuilt from torchvision in the same order.
    return transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            lambda image: image.convert("RGB"),
            transforms.ToTensor(),
            transforms.Normalize(
                (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
            ),
        ]
    )


# --- loading ---------------------------------------------------------------------------------


def test_metric_reports_what_it_is(image_reward: metrics.Metric, face_score: metrics.Metric):
    assert (image_reward.name, image_reward.level, image_reward.higher_is_better) == (
        "imagereward",
        "image",
        True,
    )
    assert (face_score.name, face_score.level) == ("face_score", "face")
    assert image_reward.required_files == (
        "ImageReward/ImageReward.pt",
        "ImageReward/med_config.json",
        "bert-base-uncased/vocab.txt",
    )
    assert image_reward.weights_sha256[:16] in image_reward.version
    assert image_reward.version != face_score.version


def test_official_checkpoint_loads_strictly_with_every_key_used(weights_dir: Path):
    state = tiny_models.tiny_imagereward_state_dict(seed=0)
    model = ImageRewardModel.from_files(
        weights_dir / "ImageReward/ImageReward.pt",
        weights_dir / "ImageReward/med_config.json",
        weights_dir / "ImageReward/vision_config.json",
    )
    assert set(model.state_dict()) == set(state)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key


def _write_bad_checkpoint(weights_dir: Path, tmp_path: Path, state: dict) -> Path:
    for name in ("med_config.json", "vision_config.json"):
        (tmp_path / name).write_bytes((weights_dir / "ImageReward" / name).read_bytes())
    torch.save(state, tmp_path / "ImageReward.pt")
    return tmp_path / "ImageReward.pt"


def _load(tmp_path: Path, checkpoint: Path) -> ImageRewardModel:
    return ImageRewardModel.from_files(
        checkpoint, tmp_path / "med_config.json", tmp_path / "vision_config.json"
    )


def test_checkpoint_with_a_missing_key_is_rejected_naming_it(weights_dir: Path, tmp_path: Path):
    state = tiny_models.tiny_imagereward_state_dict()
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    checkpoint = _write_bad_checkpoint(weights_dir, tmp_path, state)

    with pytest.raises(CheckpointMismatch, match=r"1 missing key: .*crossattention\.self\.key"):
        _load(tmp_path, checkpoint)


def test_checkpoint_with_extra_keys_is_rejected_with_counts(weights_dir: Path, tmp_path: Path):
    state = tiny_models.tiny_imagereward_state_dict()
    for index in range(7):
        state[f"blip.text_decoder.extra.{index}"] = torch.zeros(1)
    checkpoint = _write_bad_checkpoint(weights_dir, tmp_path, state)

    with pytest.raises(CheckpointMismatch) as error:
        _load(tmp_path, checkpoint)
    message = str(error.value)
    assert "7 unexpected keys: blip.text_decoder.extra.0" in message
    assert "(+2 more)" in message  # short: first keys and a count, not a wall of names


def test_checkpoint_with_a_wrong_shape_is_rejected_naming_both_shapes(
    weights_dir: Path, tmp_path: Path
):
    state = tiny_models.tiny_imagereward_state_dict()
    state["mlp.layers.0.weight"] = torch.zeros(1024, 768)
    checkpoint = _write_bad_checkpoint(weights_dir, tmp_path, state)

    with pytest.raises(
        CheckpointMismatch, match=r"mlp\.layers\.0\.weight: checkpoint \(1024, 768\) vs model"
    ):
        _load(tmp_path, checkpoint)


def test_truncated_checkpoint_says_so(weights_dir: Path, tmp_path: Path):
    checkpoint = _write_bad_checkpoint(
        weights_dir, tmp_path, tiny_models.tiny_imagereward_state_dict()
    )
    payload = checkpoint.read_bytes()
    checkpoint.write_bytes(payload[: len(payload) // 2])

    with pytest.raises(CheckpointMismatch, match="is truncated or corrupt"):
        _load(tmp_path, checkpoint)


def test_tiny_checkpoint_without_its_vision_config_fails_instead_of_guessing(
    weights_dir: Path, tmp_path: Path
):
    checkpoint = _write_bad_checkpoint(
        weights_dir, tmp_path, tiny_models.tiny_imagereward_state_dict()
    )
    with pytest.raises(CheckpointMismatch, match="shape mismatch"):
        ImageRewardModel.from_files(checkpoint, tmp_path / "med_config.json", None)


def test_default_vision_tower_is_blip_vit_large_16():
    assert VisionConfig() == VisionConfig(
        image_size=224, patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4.0
    )


# med_config.json as THUDM/ImageReward ships it.
OFFICIAL_MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}


def test_full_size_model_has_the_official_keys_and_shapes(tmp_path: Path):
    med_config = tmp_path / "med_config.json"
    med_config.write_text(json.dumps(OFFICIAL_MED_CONFIG))
    text = TextConfig.from_med_config(med_config, encoder_width=VisionConfig().width)
    with torch.device("meta"):  # shapes only: no 1.8 GB of memory
        model = ImageRewardModel(VisionConfig(), text)

    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert shapes == tiny_models.imagereward_shapes(
        vision_width=1024,
        vision_layers=24,
        patch_size=16,
        image_size=224,
        mlp_ratio=4.0,
        text_hidden=768,
        text_layers=12,
        intermediate=3072,
        vocab_size=30524,
        max_positions=512,
    )
    assert shapes["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert shapes["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"] == (
        768,
        1024,
    )


def test_encoder_width_comes_from_the_vision_tower_not_med_config(image_reward):
    # tiny med_config says encoder_width 768 (as the official one does); the vision width is 32.
    cross = image_reward.model.blip.text_encoder.encoder.layer[0].crossattention.self
    assert cross.key.in_features == tiny_models.TINY_VISION["width"]


# --- preprocessing ---------------------------------------------------------------------------


@pytest.mark.parametrize("photo_index", range(4))
def test_preprocessing_matches_the_official_transform(photo_index: int):
    photo = _photos()[photo_index]
    ours = preprocess_image(photo)
    assert ours.shape == (3, 224, 224)
    assert torch.equal(ours, _official_transform()(photo))


def test_preprocessing_is_bicubic_not_bilinear():
    photo = _photos()[0]
    bilinear = transforms.Resize(224, interpolation=transforms.InterpolationMode.BILINEAR)(photo)
    assert not torch.allclose(preprocess_image(photo), _official_transform()(bilinear))


def test_prompts_are_padded_and_truncated_to_35_tokens_like_upstream(image_reward):
    tokenizer = image_reward.tokenizer
    ids, mask = tokenize(tokenizer, PROMPTS)

    assert ids.shape == mask.shape == (len(PROMPTS), 35)
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    # Official inference passes [CLS] first; BLIP's [ENC] is in the vocab but not substituted.
    assert (ids[:, 0] == cls_id).all()
    assert ids[2, -1] == sep_id and mask[2].all()  # the long prompt is cut, still ends in [SEP]
    assert mask[1].sum() == 5 and (ids[1, 5:] == tokenizer.pad_token_id).all()
    assert tokenizer.convert_ids_to_tokens(ids[3, :5].tolist()) == [
        "[CLS]",
        "a",
        "face",
        ".",
        "[SEP]",
    ]


def test_blip_special_tokens_follow_the_file_vocabulary(image_reward):
    tokenizer = image_reward.tokenizer
    size = len(tiny_models.TINY_VOCAB)
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [size, size + 1]
    assert len(tokenizer) == tiny_models.TINY_VOCAB_SIZE


# --- scores ----------------------------------------------------------------------------------


def test_batched_scores_equal_one_at_a_time_scores(image_reward):
    batch = list(zip(_photos(), PROMPTS, strict=True))
    batched = image_reward.score(batch)
    single = torch.cat([image_reward.score([item]) for item in batch])

    assert batched.dtype == torch.float32 and batched.shape == (len(batch),)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert batched.std() > 1e-3  # the unit-gain tiny model tells inputs apart


def test_scores_depend_on_the_prompt_and_on_the_image(image_reward):
    astronaut, camera = _photos()[:2]
    scores = image_reward.score(
        [(astronaut, "a photo of an astronaut"), (astronaut, "a red cat"), (camera, "a red cat")]
    )
    assert abs(scores[0] - scores[1]) > 1e-4
    assert abs(scores[1] - scores[2]) > 1e-4


def test_image_reward_is_the_normalised_raw_reward(image_reward):
    photo = _photos()[0]
    ids, mask = tokenize(image_reward.tokenizer, ["a photo of an astronaut"])
    with torch.inference_mode():
        raw = image_reward.model(preprocess_image(photo)[None], ids, mask)
    expected = (raw - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD
    torch.testing.assert_close(image_reward.score([(photo, "a photo of an astronaut")]), expected)


def test_scores_are_deterministic_in_eval_mode(image_reward):
    batch = [(photo, "a cat") for photo in _photos()]
    assert torch.equal(image_reward.score(batch), image_reward.score(batch))


def test_empty_batch_gives_an_empty_tensor(image_reward, face_score):
    assert image_reward.score([]).shape == (0,)
    assert face_score.score([]).shape == (0,)


def test_image_reward_refuses_images_without_prompts(image_reward):
    with pytest.raises(TypeError, match="pairs"):
        image_reward.score(_photos()[:1])


def test_face_score_is_the_raw_reward_under_the_fixed_prompt(face_score):
    crops = _photos()
    ids, mask = tokenize(face_score.tokenizer, ["A face."] * len(crops))
    with torch.inference_mode():
        raw = face_score.model(torch.stack([preprocess_image(c) for c in crops]), ids, mask)

    scores = face_score.score([FaceCrop(crops[0])] + crops[1:])
    torch.testing.assert_close(scores, raw, atol=1e-5, rtol=0)
    single = torch.cat([face_score.score([crop]) for crop in crops])
    torch.testing.assert_close(scores, single, atol=1e-5, rtol=0)


def test_face_score_of_boxes_uses_the_official_crop(face_score):
    photo = _photos()[0]
    box = (180.4, 20.7, 300.2, 170.9)
    expected = face_score.score([crop_face(photo, box)])
    torch.testing.assert_close(face_score.score_image_faces(photo, [box]), expected)


# --- face crops and aggregation --------------------------------------------------------------


def test_face_crop_grows_the_raw_box_by_one_pixel_with_int_truncation():
    photo = Image.fromarray(
        np.arange(100 * 80 * 3, dtype=np.uint32).reshape(100, 80, 3).astype(np.uint8)
    )
    crop = crop_face(photo, (10.7, 20.2, 30.5, 50.9))
    # upstream: x = int(x0 - 1) = 9, w = int(x1 + 1) - x = 31 - 9; same for y: 19 .. 51
    assert crop.size == (22, 32)
    assert np.array_equal(np.asarray(crop), np.asarray(photo)[19:51, 9:31])


def test_face_crop_is_clamped_to_the_image_and_made_rgb():
    photo = Image.fromarray(skdata.camera())  # greyscale
    crop = crop_face(photo, (0.2, -3.0, 40.0, 600.0))
    assert crop.mode == "RGB"
    assert crop.size == (41, 512)


def test_detected_faces_are_cropped_and_filtered_by_confidence():
    photo = _photos()[0]
    detections = [
        SimpleNamespace(box=(180.4, 20.7, 300.2, 170.9), confidence=0.95),
        SimpleNamespace(box=(10.0, 10.0, 50.0, 50.0), confidence=0.5),
    ]
    (crop,) = face_crops(photo, detections, min_confidence=0.9)
    assert crop.box == (180.4, 20.7, 300.2, 170.9) and crop.confidence == 0.95
    assert np.array_equal(np.asarray(crop.image), np.asarray(crop_face(photo, crop.box)))
    assert len(face_crops(photo, detections, min_confidence=0.0)) == 2


def test_aggregates_of_faces_in_one_image():
    scores = [0.5, -1.0, 2.0]
    boxes = [(0, 0, 10, 10), (0, 0, 50, 50), (0, 0, 20, 20)]
    assert aggregate_faces(scores, boxes, "mean") == pytest.approx(0.5)
    assert aggregate_faces(scores, boxes, "min") == -1.0
    assert aggregate_faces(scores, boxes, "largest") == -1.0
    assert aggregate_faces([], [], "mean") is None


def test_images_without_faces_get_no_score_and_are_counted():
    values, without_face = aggregate_images(
        [([1.0, 3.0], [(0, 0, 1, 1), (0, 0, 2, 2)]), ([], []), ([2.0], [(0, 0, 1, 1)])], "mean"
    )
    assert values == [2.0, None, 2.0]
    assert without_face == 1


# --- never downloads -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imagereward", "face_score"])
def test_half_precision_autocast_runs_and_stays_close(weights_dir: Path, name: str):
    # bf16 autocast is the GPU default; on the CPU it exercises the same dtype paths.
    exact = metrics.create(name, weights_dir=weights_dir)
    half = metrics.create(name, weights_dir=weights_dir, dtype="bfloat16")
    batch = [(photo, prompt) for photo, prompt in zip(_photos(), PROMPTS, strict=True)]
    if name == "face_score":
        batch = [photo for photo, _ in batch]
    scores = half.score(batch)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, exact.score(batch), atol=0.1, rtol=0.05)


def test_loading_and_scoring_never_touch_the_network(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("a metric tried to open a network connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    metric = metrics.create("face_score", weights_dir=weights_dir)
    assert metric.score(_photos()[:1]).shape == (1,)
