"""Face Score training on tiny random ImageReward checkpoints, on the CPU."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from ml import metrics
from ml.metrics import FaceCrop
from ml.metrics.imagereward import ImageRewardModel, load_tokenizer, preprocess_image, tokenize
from ml.train.face_score import (
    BEST_CHECKPOINT_NAME,
    FaceScoreTrainConfig,
    accumulate_gradients,
    bt_loss,
    cache_pairs,
    cosine_with_warmup,
    crop_pixels,
    freeze_layers,
    list_checkpoints,
    normalize_pixels,
    pair_rewards,
    pairwise_accuracy,
    prompt_tokens,
    train_face_score,
    trim_padding,
)
from tests import images
from tests.ml import tiny_models

# Small steps keep each run to a second or two; dropout (p=0.1 in the tiny med config), flips and
# the data order all draw random numbers, so the resume tests see every RNG.
QUICK = {
    "batch_size": 2,
    "accumulation": 2,
    "max_steps": 4,
    "warmup_steps": 1,
    "lr": 1e-3,
    "val_every": 2,
    "checkpoint_every": 2,
    "checkpoints_total_limit": 10,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from threads, and on a shared machine they lose a lot to contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    tiny_models.write_tiny_imagereward(root)
    return root


@pytest.fixture(scope="module")
def init_checkpoint(weights_dir: Path) -> Path:
    return weights_dir / "ImageReward" / "ImageReward.pt"


def _face_crops(count: int, seed: int = 0) -> list[Image.Image]:
    """Jittered crops around the faces of the astronaut and Grace Hopper, 48-110 px."""
    photos = [
        (Image.fromarray(images.astronaut()), images.ASTRONAUT_FACE_CORE),
        (Image.fromarray(images.grace_hopper()), images.GRACE_HOPPER_FACE_CORE),
    ]
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        photo, (x0, y0, x1, y1) = photos[index % 2]
        side = int(rng.integers(48, 110))
        cx = (x0 + x1) / 2 + rng.integers(-25, 26)
        cy = (y0 + y1) / 2 + rng.integers(-25, 26)
        left, top = int(cx - side / 2), int(cy - side / 2)
        crops.append(photo.crop((left, top, left + side, top + side)))
    return crops


def _degrade(crop: Image.Image, seed: int) -> Image.Image:
    """A clearly worse face: heavy blur plus noise."""
    blurred = np.asarray(crop.filter(ImageFilter.GaussianBlur(radius=5)), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 25, blurred.shape)
    return Image.fromarray(np.clip(blurred + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pairs() -> list[tuple[Image.Image, Image.Image]]:
    return [(crop, _degrade(crop, index)) for index, crop in enumerate(_face_crops(16))]


def _train(init_checkpoint: Path, pairs, out_dir: Path, val_sets=None, **settings):
    return train_face_score(
        init_checkpoint=init_checkpoint,
        med_config=init_checkpoint.parent / "med_config.json",
        tokenizer_dir=init_checkpoint.parent.parent / "bert-base-uncased",
        train_pairs=pairs,
        val_sets=val_sets,
        config=FaceScoreTrainConfig(**{**QUICK, **settings.pop("config", {})}),
        out_dir=out_dir,
        device="cpu",
        **settings,
    )


def _tiny_model(init_checkpoint: Path) -> ImageRewardModel:
    folder = init_checkpoint.parent
    return ImageRewardModel.from_files(
        init_checkpoint, folder / "med_config.json", folder / "vision_config.json"
    )


# --- the loss, the schedule, the freezing rule ----------------------------------------------


def test_bt_loss_is_the_mean_negative_log_sigmoid_of_the_reward_margin_with_its_gradient() -> None:
    r_good = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    r_bad = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64, requires_grad=True)
    loss = bt_loss(r_good, r_bad)
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0)) + math.log(2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/d r_good of −log σ(d) / n is −σ(−d) / n, and the opposite for r_bad.
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected_grad = [-sigmoid(-2.0) / 3, -sigmoid(2.0) / 3, -0.5 / 3]
    assert r_good.grad.tolist() == pytest.approx(expected_grad, rel=1e-6)
    assert r_bad.grad.tolist() == pytest.approx([-g for g in expected_grad], rel=1e-6)


def test_cosine_schedule_warms_up_linearly_then_decays_along_a_half_cosine() -> None:
    factors = [cosine_with_warmup(step, warmup_steps=4, max_steps=12) for step in range(12)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == 1.0
    assert factors[8] == pytest.approx(0.5)  # halfway through the 8 decay steps
    assert all(a > b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert cosine_with_warmup(12, warmup_steps=4, max_steps=12) == pytest.approx(0.0)


def test_fix_rate_07_freezes_embeddings_the_first_layer_of_each_tower_and_projections(
    init_checkpoint: Path,
) -> None:
    model = _tiny_model(init_checkpoint)
    trainable = {name for name, _ in freeze_layers(model, 0.7)}
    # The tiny towers have 2 text layers and 2 ViT blocks: int(2 × 0.7) = 1 layer frozen in each.
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith(
            (
                "blip.text_encoder.encoder.layer.1.",
                "blip.visual_encoder.blocks.1.",
                "blip.visual_encoder.norm.",
                "mlp.",
            )
        )
    }
    assert trainable == expected
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert {
        "blip.text_encoder.embeddings.word_embeddings.weight",
        "blip.text_encoder.embeddings.position_embeddings.weight",
        "blip.text_encoder.embeddings.LayerNorm.weight",
        "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight",
        "blip.visual_encoder.cls_token",
        "blip.visual_encoder.pos_embed",
        "blip.visual_encoder.patch_embed.proj.weight",
        "blip.visual_encoder.blocks.0.attn.proj.weight",
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
    } <= frozen
    assert all(not p.requires_grad for n, p in model.named_parameters() if "_proj" in n)


def test_fix_rate_zero_freezes_only_projections_and_one_freezes_both_towers(
    init_checkpoint: Path,
) -> None:
    model = _tiny_model(init_checkpoint)
    frozen = {n for n, p in model.named_parameters() if n not in dict(freeze_layers(model, 0.0))}
    assert frozen == {
        "blip.vision_proj.weight",
        "blip.vision_proj.bias",
        "blip.text_proj.weight",
        "blip.text_proj.bias",
    }
    trainable = {name for name, _ in freeze_layers(model, 1.0)}
    assert trainable == {name for name, _ in model.mlp.named_parameters(prefix="mlp")}


# --- pixels and tokens ----------------------------------------------------------------------


def test_cached_uint8_crops_normalise_to_exactly_preprocess_image() -> None:
    grey = Image.fromarray(images.camera()[:, :, 0])  # "L" mode: resized before RGB, as upstream
    for image in [*_face_crops(3), grey, Image.fromarray(images.astronaut()).resize((150, 400))]:
        assert torch.equal(normalize_pixels(crop_pixels(image)), preprocess_image(image))


def test_cached_pairs_hold_good_then_bad_and_a_repeated_crop_in_every_slot() -> None:
    first, second = _face_crops(2)
    cached = cache_pairs([(first, second), (second, first), (first, first)])
    assert cached.shape == (3, 2, 3, 224, 224) and cached.dtype == torch.uint8
    assert torch.equal(cached[0, 0], crop_pixels(first))
    assert torch.equal(cached[0, 1], crop_pixels(second))
    assert torch.equal(cached[1, 0], cached[0, 1]) and torch.equal(cached[1, 1], cached[0, 0])
    assert torch.equal(cached[2, 0], cached[0, 0]) and torch.equal(cached[2, 1], cached[0, 0])


def test_trimming_prompt_padding_leaves_the_rewards_unchanged(init_checkpoint: Path, pairs) -> None:
    model = _tiny_model(init_checkpoint)
    tokenizer = load_tokenizer(init_checkpoint.parent.parent / "bert-base-uncased")
    full_ids, full_mask = tokenize(tokenizer, ["A face."])
    ids, mask = trim_padding(full_ids, full_mask)
    assert ids.shape == (1, 5) and full_ids.shape == (1, 35)  # [CLS] a face . [SEP]
    pixels = normalize_pixels(cache_pairs(pairs[:3]))
    with torch.no_grad():
        full = pair_rewards(model, pixels[:, 0], pixels[:, 1], full_ids, full_mask)
        trimmed = pair_rewards(model, pixels[:, 0], pixels[:, 1], ids, mask)
    for a, b in zip(full, trimmed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- the training step ----------------------------------------------------------------------


def test_four_micro_batches_accumulate_the_gradients_of_one_batch_of_four_times_the_size(
    init_checkpoint: Path, pairs
) -> None:
    model = _tiny_model(init_checkpoint).eval()  # dropout off: both ways see the same network
    params = [param for _, param in freeze_layers(model, 0.7)]
    tokenizer = load_tokenizer(init_checkpoint.parent.parent / "bert-base-uncased")
    ids, mask = prompt_tokens(tokenizer, "A face.", torch.device("cpu"))
    pixels = normalize_pixels(cache_pairs(pairs[:8]))

    def gradients(micro_batches) -> tuple[list[torch.Tensor], float]:
        model.zero_grad(set_to_none=True)
        loss, _ = accumulate_gradients(model, micro_batches, ids, mask)
        return [param.grad.clone() for param in params], float(loss)

    split = [(pixels[i : i + 2, 0], pixels[i : i + 2, 1]) for i in range(0, 8, 2)]
    accumulated, accumulated_loss = gradients(split)
    whole, whole_loss = gradients([(pixels[:, 0], pixels[:, 1])])
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-6)
    assert any(grad.abs().max() > 0 for grad in whole)
    for a, b in zip(accumulated, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_frozen_parameters_stay_bit_identical_while_every_trainable_one_moves(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    # Without a validation set the best model is kept by training loss, checked at the end only
    # here: FS_model.pt holds the final weights.
    result = _train(init_checkpoint, pairs, tmp_path, config={"val_every": 4})
    assert result.best_step == 4
    before = torch.load(init_checkpoint, weights_only=True)
    after = torch.load(tmp_path / BEST_CHECKPOINT_NAME, weights_only=True)
    assert before.keys() == after.keys()
    trainable = {name for name, _ in freeze_layers(_tiny_model(init_checkpoint), 0.7)}
    for key in before:
        if key in trainable:
            assert not torch.equal(before[key], after[key]), f"{key} did not train"
        else:
            assert torch.equal(before[key], after[key]), f"frozen {key} changed"


def test_a_run_resumed_from_a_step_k_checkpoint_reproduces_the_uninterrupted_run(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    val_sets = {"crafted": pairs[:4]}
    whole = _train(init_checkpoint, pairs, tmp_path / "whole", val_sets)
    assert [record["step"] for record in whole.history] == [1, 2, 3, 4]
    # A fresh out_dir holding only the step-2 checkpoint of the uninterrupted run.
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    step_2 = dict(list_checkpoints(tmp_path / "whole"))[2]
    shutil.copy(step_2, resumed_dir / "checkpoints" / step_2.name)
    resumed = _train(init_checkpoint, pairs, resumed_dir, val_sets)

    assert resumed.steps == 4
    for expected, got in zip(whole.history, resumed.history, strict=True):
        assert got["step"] == expected["step"]
        assert got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
        assert got["grad_norm"] == pytest.approx(expected["grad_norm"], abs=1e-6)
    final_whole = torch.load(dict(list_checkpoints(tmp_path / "whole"))[4], weights_only=True)
    final_resumed = torch.load(dict(list_checkpoints(resumed_dir))[4], weights_only=True)
    for name, tensor in final_whole["trainable"].items():
        torch.testing.assert_close(final_resumed["trainable"][name], tensor, rtol=0, atol=1e-6)
    assert resumed.final_validation == whole.final_validation


def test_should_stop_ends_training_after_the_current_step_with_a_checkpoint(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    steps_seen: list[int] = []
    result = _train(
        init_checkpoint,
        pairs,
        tmp_path,
        config={"checkpoint_every": 100, "max_steps": 10},
        on_step=lambda record: steps_seen.append(record["step"]),
        should_stop=lambda: len(steps_seen) >= 3,
    )
    assert result.stopped and result.steps == 3
    assert steps_seen == [1, 2, 3]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3]
    assert result.final_validation == {}
    # The job runs again (e.g. resumed after a cancel): it continues at step 4.
    rest = _train(
        init_checkpoint, pairs, tmp_path, config={"checkpoint_every": 100, "max_steps": 5}
    )
    assert not rest.stopped
    assert [record["step"] for record in rest.history] == [1, 2, 3, 4, 5]


def test_running_a_finished_job_again_trains_no_further_steps(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    val_sets = {"crafted": pairs[:4]}
    first = _train(init_checkpoint, pairs, tmp_path, val_sets)
    again = _train(init_checkpoint, pairs, tmp_path, val_sets, on_step=pytest.fail)
    assert again.steps == first.steps == 4
    assert again.history == first.history
    assert again.best_step == first.best_step
    assert again.final_validation == first.final_validation


def test_checkpoints_beyond_the_total_limit_are_deleted_oldest_first(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    _train(
        init_checkpoint,
        pairs,
        tmp_path,
        config={"max_steps": 5, "checkpoint_every": 1, "checkpoints_total_limit": 2},
    )
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4, 5]


def test_training_on_sharp_against_degraded_crops_learns_the_preference(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    model = _tiny_model(init_checkpoint)
    tokenizer = load_tokenizer(init_checkpoint.parent.parent / "bert-base-uncased")
    # Orient the pairs so that the random starting model gets them mostly wrong: whatever it
    # ends up preferring was learnt.
    if pairwise_accuracy(model, tokenizer, pairs, "cpu") > 0.5:
        pairs = [(bad, good) for good, bad in pairs]
    start = pairwise_accuracy(model, tokenizer, pairs, "cpu")
    assert start <= 0.5

    result = _train(
        init_checkpoint,
        pairs,
        tmp_path,
        {"train": pairs},
        config={
            "batch_size": 8,
            "accumulation": 1,
            "max_steps": 20,
            "warmup_steps": 2,
            "lr": 3e-4,
            "val_every": 10,
            "checkpoint_every": 20,
            "flip": True,
        },
    )
    assert result.initial_validation == {"train": start}
    assert result.final_validation["train"] >= 0.8
    assert result.best_validation["train"] >= 0.8


def test_the_saved_best_model_loads_strictly_into_the_face_score_metric(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(
        init_checkpoint.parent.parent / "bert-base-uncased", weights / "bert-base-uncased"
    )
    out_dir = weights / "FaceScore"
    # No validation set: kept by training loss, so the file holds trained weights.
    result = _train(init_checkpoint, pairs, out_dir, config={"val_every": 4})
    assert result.best_checkpoint == out_dir / "FS_model.pt"
    assert (out_dir / "med_config.json").read_text() == (
        init_checkpoint.parent / "med_config.json"
    ).read_text()
    assert (out_dir / "vision_config.json").is_file()  # the tiny tower is not ViT-L

    face_score = metrics.create("face_score", weights_dir=weights)
    crops = [good for good, _ in pairs[:4]]
    scores = face_score.score([FaceCrop(crop) for crop in crops])

    trained = ImageRewardModel.from_files(
        out_dir / "FS_model.pt", out_dir / "med_config.json", out_dir / "vision_config.json"
    )
    tokenizer = load_tokenizer(weights / "bert-base-uncased")
    ids, mask = tokenize(tokenizer, ["A face."] * len(crops))
    pixels = torch.stack([preprocess_image(crop) for crop in crops])
    with torch.no_grad():
        expected = trained(pixels, ids, mask)
        initial = _tiny_model(init_checkpoint)(pixels, ids, mask)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert (scores - initial).abs().max() > 1e-3  # the file holds the trained weights


# --- settings -------------------------------------------------------------------------------


def test_config_round_trips_through_a_json_safe_dict() -> None:
    config = FaceScoreTrainConfig(fix_rate=0.5, lr=2e-5, batch_size=8, flip=False)
    assert FaceScoreTrainConfig.from_dict(config.to_dict()) == config
    assert FaceScoreTrainConfig.from_dict({}) == FaceScoreTrainConfig()


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"fix_rate": 1.5}, "fix_rate"),
        ({"lr": -1e-5}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"learning_rate": 1e-5}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"accumulation": 2.5}, "accumulation"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"warmup_steps": 20, "max_steps": 10}, "warmup_steps"),
        ({"prompt": "  "}, "prompt"),
    ],
)
def test_bad_config_values_raise_value_error_naming_the_field(values, name) -> None:
    with pytest.raises(ValueError, match=rf"^{name}:"):
        FaceScoreTrainConfig.from_dict(values)


def test_training_refuses_an_empty_validation_set_and_no_pairs(
    init_checkpoint: Path, pairs, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="train_pairs"):
        _train(init_checkpoint, [], tmp_path)
    with pytest.raises(ValueError, match="'human'"):
        _train(init_checkpoint, pairs, tmp_path, {"human": []})
