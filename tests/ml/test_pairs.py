"""Face-pair crafting: masks, paste-back, planning, seeded batched inpainting, margin filter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from ml.metrics.imagereward import crop_face
from ml.pairs import (
    CraftedPair,
    CraftSettings,
    MaskSettings,
    PairSource,
    context_crop,
    craft_pairs,
    face_mask,
    margin_filter,
    pair_seed,
    paste_back,
    plan_pairs,
)
from ml.sd import load_pipeline
from tests.images import astronaut, grace_hopper
from tests.ml.tiny_sd import TINY_IMAGE_PX, write_tiny_sd

# The faces in the photos once resized to 128 px wide (ASTRONAUT_FACE_CORE / GRACE_HOPPER_FACE_CORE
# in tests/images.py, scaled and grown to a detector-like box).
ASTRONAUT_BOX = (44.0, 16.0, 68.0, 42.0)
GRACE_BOX = (44.0, 40.0, 88.0, 80.0)


def _photo(array: np.ndarray, width: int = 128) -> Image.Image:
    image = Image.fromarray(array)
    return image.resize(
        (width, round(image.height * width / image.width)), Image.Resampling.LANCZOS
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    folder = write_tiny_sd(tmp_path_factory.mktemp("sd") / "inpaint", inpaint=True)
    return load_pipeline(folder, task="inpaint", device="cpu")


@pytest.fixture(scope="module")
def sources() -> list[PairSource]:
    astro, grace = _photo(astronaut()), _photo(grace_hopper())
    return [
        PairSource("file:astronaut.png", astro, [(ASTRONAUT_BOX, 0.99)], "an astronaut"),
        PairSource("file:grace_hopper.jpg", grace, [(GRACE_BOX, 0.95)], ""),
        # the same photo under another key: another seed, so another inpainting
        PairSource("file:astronaut-copy.png", astro, [(ASTRONAUT_BOX, 0.99)], "an astronaut"),
    ]


def _settings(**changes) -> CraftSettings:
    base = CraftSettings(
        model="tiny",
        steps=2,
        resolution=TINY_IMAGE_PX,
        batch_size=2,
        mask=MaskSettings(min_face_px=16),
    )
    return dataclasses.replace(base, **changes)


def _bytes(pair: CraftedPair) -> tuple[bytes, bytes, bytes]:
    return pair.good.tobytes(), pair.bad.tobytes(), pair.mask.tobytes()


@pytest.fixture(scope="module")
def crafted(pipeline, sources) -> list[CraftedPair]:
    tasks, _ = plan_pairs(sources, _settings())
    return list(craft_pairs(pipeline, tasks, _settings()))


# --- masks and paste-back -------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["ellipse", "box"])
def test_mask_is_zero_outside_the_grown_box_full_at_the_centre_and_feathered_between(shape):
    box = (100.0, 60.0, 180.0, 160.0)  # 80 × 100 face
    settings = MaskSettings(shape=shape, margin=0.25, feather=0.2)
    mask = np.asarray(face_mask((320, 240), box, settings))

    assert mask.shape == (240, 320) and mask.dtype == np.uint8
    grown = (80.0, 35.0, 200.0, 185.0)  # the box ± 25 % of its width / height
    ys, xs = np.mgrid[0:240, 0:320] + 0.5  # pixel centres
    outside = (xs < grown[0]) | (xs > grown[2]) | (ys < grown[1]) | (ys > grown[3])
    assert mask[outside].max() == 0
    assert mask[110, 140] == 255  # the face's centre
    assert mask[85:135, 115:165].min() == 255  # the whole core of the face
    band = mask[(mask > 0) & (mask < 255)]
    assert band.size > 100  # a soft edge, not a step
    # along a ray from the centre to the right the mask only falls
    ray = mask[110, 140:320].astype(int)
    assert np.all(np.diff(ray) <= 0)
    assert ray[0] == 255 and ray[-1] == 0


def test_mask_without_feather_is_a_hard_box():
    mask = np.asarray(
        face_mask((64, 64), (16, 16, 48, 48), MaskSettings(shape="box", margin=0.0, feather=0.0))
    )

    expected = np.zeros((64, 64), np.uint8)
    expected[16:48, 16:48] = 255
    np.testing.assert_array_equal(mask, expected)


def test_mask_of_a_face_at_the_image_edge_stays_inside_the_image():
    mask = np.asarray(face_mask((100, 80), (-10.0, 50.0, 30.0, 95.0), MaskSettings()))

    assert mask.shape == (80, 100)
    assert mask[70, 10] == 255
    assert mask[:, 60:].max() == 0


def test_paste_back_keeps_every_pixel_outside_the_mask_identical():
    original = _photo(astronaut(), 256)
    inpainted = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    )
    mask = face_mask(
        original.size, (88.0, 32.0, 136.0, 84.0), MaskSettings(margin=0.3, feather=0.3)
    )

    result = np.asarray(paste_back(original, inpainted, mask))
    good, bad, m = np.asarray(original), np.asarray(inpainted), np.asarray(mask)
    assert (m == 0).sum() > 50_000 and (m == 255).sum() > 1_000
    np.testing.assert_array_equal(result[m == 0], good[m == 0])
    np.testing.assert_array_equal(result[m == 255], bad[m == 255])
    soft = (m > 0) & (m < 255)
    low, high = np.minimum(good, bad), np.maximum(good, bad)
    assert np.all((result[soft] >= low[soft]) & (result[soft] <= high[soft]))


def test_paste_back_refuses_images_of_different_sizes():
    with pytest.raises(ValueError, match=r"sizes differ"):
        paste_back(Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9)), Image.new("L", (8, 8)))


def test_context_crop_is_a_square_around_the_face_clamped_to_the_image():
    settings = _settings(resolution=512, context=3.0)
    crop, target = context_crop((1000, 800), (450.0, 350.0, 550.0, 450.0), settings)
    assert crop == (350, 250, 650, 550) and target == (512, 512)

    crop, target = context_crop((1000, 800), (0.0, 700.0, 100.0, 800.0), settings)
    assert crop == (0, 500, 300, 800)  # shifted inside, not cut

    # a face as large as a narrow image: the crop is the image's width, the mask region's height
    crop, target = context_crop((120, 400), (10.0, 100.0, 110.0, 200.0), settings)
    assert crop[0] == 0 and crop[2] == 120
    assert crop[3] - crop[1] == 300
    assert (
        target[1] == 512 and target[0] % 8 == 0 and target[0] == 208
    )  # 120 × 512 / 300 = 204.8 → 208


# --- planning -------------------------------------------------------------------------------


def test_small_and_unsure_faces_and_faceless_images_are_skipped_and_counted():
    image = Image.new("RGB", (200, 200))
    sources = [
        PairSource(
            "a",
            image,
            [((10, 10, 70, 70), 0.9), ((100, 100, 120, 120), 0.9), ((0, 0, 90, 90), 0.3)],
        ),
        PairSource("b", image, []),
        PairSource("c", image, [((50, 50, 150, 150), 0.5)], prompt="  a woman  "),
    ]
    tasks, skipped = plan_pairs(
        sources, _settings(mask=MaskSettings(min_face_px=48), min_confidence=0.5)
    )

    assert skipped == {"no_face": 1, "low_confidence": 1, "small_face": 1}
    assert [(t.source.key, t.face_index) for t in tasks] == [("a", 0), ("c", 0)]
    assert [t.prompt for t in tasks] == [
        "a photo of a face",
        "a woman",
    ]  # own prompt, else the default
    assert tasks[0].seed == pair_seed(0, "a", 0)

    fixed, _ = plan_pairs(sources, _settings(prompt_source="fixed", prompt="a face"))
    assert {t.prompt for t in fixed} == {"a face"}


def test_pair_seed_depends_on_seed_key_and_face_only():
    seeds = {
        pair_seed(base, key, index)
        for base in (0, 1)
        for key in ("generation:1", "generation:2")
        for index in (0, 1)
    }
    assert len(seeds) == 8
    assert all(0 <= seed < 2**63 for seed in seeds)
    # fixed forever: stored pairs name their seed, and a rerun must reproduce them
    assert pair_seed(0, "generation:12", 0) == 4025474096010385084


# --- crafting -------------------------------------------------------------------------------


def test_crafted_pairs_differ_only_inside_the_mask(crafted, sources):
    assert [(p.source_key, p.face_index) for p in crafted] == [(s.key, 0) for s in sources]
    for pair, source in zip(crafted, sources, strict=True):
        good, bad, mask = np.asarray(pair.good), np.asarray(pair.bad), np.asarray(pair.mask)
        assert pair.good.size == pair.bad.size == pair.mask.size == source.image.size
        assert pair.mask.mode == "L"
        np.testing.assert_array_equal(good, np.asarray(source.image))
        np.testing.assert_array_equal(bad[mask == 0], good[mask == 0])
        inside = mask == 255
        assert np.abs(bad[inside].astype(int) - good[inside].astype(int)).mean() > 10
        assert pair.seed == pair_seed(0, source.key, 0)


def test_face_crops_are_the_official_face_score_crops_of_the_box(crafted):
    pair = crafted[0]
    assert pair.good_crop().tobytes() == crop_face(pair.good, pair.box).tobytes()
    assert pair.bad_crop().tobytes() == crop_face(pair.bad, pair.box).tobytes()
    assert pair.good_crop().tobytes() != pair.bad_crop().tobytes()


def test_same_seed_gives_byte_identical_pairs(pipeline, sources, crafted):
    tasks, _ = plan_pairs(sources, _settings())
    again = list(craft_pairs(pipeline, tasks, _settings()))

    assert [_bytes(p) for p in again] == [_bytes(p) for p in crafted]


def test_noise_of_a_pair_does_not_depend_on_its_batch(pipeline, sources, crafted):
    tasks, _ = plan_pairs(sources, _settings())
    alone = {p.source_key: p for p in craft_pairs(pipeline, tasks[::-1], _settings(batch_size=1))}
    batched = {p.source_key: p for p in craft_pairs(pipeline, tasks[::-1], _settings(batch_size=3))}
    for pair in crafted:
        # one batch per pair: nothing else can change its pixels, in any order
        single_again = next(
            craft_pairs(
                pipeline,
                [t for t in tasks if t.source.key == pair.source_key],
                _settings(batch_size=1),
            )
        )
        assert _bytes(single_again) == _bytes(alone[pair.source_key])
        # other batch shapes: the same noise, so the same image up to float rounding in the
        # batched kernels (at most one grey level on a few pixels)
        for other in (alone[pair.source_key], batched[pair.source_key]):
            difference = np.abs(
                np.asarray(other.bad).astype(int) - np.asarray(pair.bad).astype(int)
            )
            assert difference.max() <= 1
            assert (difference > 0).mean() < 0.01


def test_another_seed_gives_another_bad_face(pipeline, sources, crafted):
    tasks, _ = plan_pairs(sources[:1], _settings(seed=1))
    other = next(craft_pairs(pipeline, tasks, _settings(seed=1)))

    mask = np.asarray(other.mask) == 255
    assert other.seed != crafted[0].seed
    assert (
        np.abs(
            np.asarray(other.bad)[mask].astype(int) - np.asarray(crafted[0].bad)[mask].astype(int)
        ).mean()
        > 5
    )
    # and two keys of the same photo are two different inpaintings
    assert crafted[0].bad.tobytes() != crafted[2].bad.tobytes()


def test_crafting_reports_progress_and_stops_between_batches(pipeline, sources):
    tasks, _ = plan_pairs(sources, _settings())
    progress: list[tuple[int, int]] = []
    pairs = list(
        craft_pairs(
            pipeline,
            tasks,
            _settings(),
            on_progress=lambda done, total: progress.append((done, total)),
            should_stop=lambda: len(progress) >= 1,
        )
    )

    assert len(pairs) == 2  # the first batch of two, then the stop
    assert progress == [(2, 3)]


# --- margin filter --------------------------------------------------------------------------


def _brightness(crops: list[Image.Image]) -> list[float]:
    return [float(np.asarray(crop.convert("L")).mean()) for crop in crops]


def test_margin_filter_keeps_exactly_the_pairs_whose_good_face_wins_by_the_margin(crafted):
    margins = [
        b - c
        for b, c in zip(
            _brightness([p.good_crop() for p in crafted]),
            _brightness([p.bad_crop() for p in crafted]),
            strict=True,
        )
    ]
    threshold = sorted(margins)[1]  # keeps the two largest margins, the tie included
    calls: list[int] = []

    def score(crops: list[Image.Image]) -> list[float]:
        calls.append(len(crops))
        return _brightness(crops)

    kept = list(margin_filter(crafted, score, threshold, batch_size=2))

    expected = [p for p, m in zip(crafted, margins, strict=True) if m >= threshold]
    assert [k[0] for k in kept] == expected and len(expected) == 2
    for pair, good, bad in kept:
        assert good == _brightness([pair.good_crop()])[0]
        assert bad == _brightness([pair.bad_crop()])[0]
    assert calls == [4, 2]  # two pairs' good and bad crops per call


def test_margin_filter_refuses_a_scorer_that_drops_crops(crafted):
    with pytest.raises(ValueError, match=r"returned 1 scores for 6 crops"):
        list(margin_filter(crafted, lambda crops: [0.0], 0.0))


# --- settings -------------------------------------------------------------------------------


def test_craft_settings_round_trip_through_json_dicts():
    settings = _settings(mask=MaskSettings(shape="box", margin=0.3, feather=0.0, min_face_px=20))
    data = settings.to_dict()

    assert data["mask"] == {"shape": "box", "margin": 0.3, "feather": 0.0, "min_face_px": 20}
    assert CraftSettings.from_dict(data) == settings
    assert CraftSettings.from_dict({"model": "m"}) == CraftSettings(model="m")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "m", "strenght": 0.5}, r"unknown setting strenght"),
        ({"model": "m", "strength": 1.5}, r"strength must be in \(0, 1\]"),
        ({"model": "m", "steps": "30"}, r"steps must be a whole number"),
        ({"model": "m", "steps": 2.5}, r"steps must be a whole number"),
        (
            {"model": "m", "prompt_source": "caption"},
            r"prompt_source must be one of 'source', 'fixed'",
        ),
        ({"model": "m", "mask": {"margin": -1}}, r"mask\.margin must be between 0 and 2"),
        ({"model": "m", "mask": {"shape": "circle"}}, r"mask\.shape must be one of"),
        ({"model": "m", "mask": {"radius": 3}}, r"unknown setting mask\.radius"),
        ({"model": "m", "resolution": 500}, r"resolution must be a multiple of 8"),
        ({"model": ""}, r"model must name"),
        ({}, r"model is required"),
    ],
)
def test_bad_craft_settings_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        CraftSettings.from_dict(data)
