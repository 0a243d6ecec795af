from __future__ import annotations

import numpy as np
import pytest

from ml.faces import Detection, FaceDetector, create_detector, list_detectors
from ml.faces.haar import HaarFaceDetector, level_weight_to_confidence, suppress_overlaps
from tests import images


@pytest.fixture(scope="module")
def haar() -> FaceDetector:
    return create_detector("haar")


def _contains(box: tuple[float, float, float, float], region: tuple[int, int, int, int]) -> bool:
    return (
        box[0] <= region[0] and box[1] <= region[1] and box[2] >= region[2] and box[3] >= region[3]
    )


def _area(box: tuple[float, float, float, float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


@pytest.mark.parametrize(
    ("photo", "core"),
    [
        (images.astronaut, images.ASTRONAUT_FACE_CORE),
        (images.grace_hopper, images.GRACE_HOPPER_FACE_CORE),
    ],
)
def test_finds_exactly_the_one_face_in_a_portrait(haar: FaceDetector, photo, core) -> None:
    (faces,) = haar.detect([photo()])

    assert len(faces) == 1
    face = faces[0]
    assert _contains(face.box, core)
    # The box is the face, not half the picture.
    assert _area(face.box) < 4 * _area(core)
    assert 0.5 < face.confidence <= 1.0
    assert face.landmarks is None


@pytest.mark.parametrize("blank", [images.flat_image, images.noise_image])
def test_finds_no_face_in_a_flat_or_noise_image(haar: FaceDetector, blank) -> None:
    assert haar.detect([blank()]) == [[]]


def test_batched_detection_equals_one_at_a_time(haar: FaceDetector) -> None:
    batch = [images.astronaut(), images.flat_image(), images.grace_hopper(), images.camera()]

    assert haar.detect(batch) == [haar.detect([image])[0] for image in batch]


def test_detection_is_deterministic(haar: FaceDetector) -> None:
    photo = images.grace_hopper()
    assert haar.detect([photo]) == haar.detect([photo.copy()])


def test_large_image_is_searched_downscaled_and_boxes_come_back_in_its_pixels(
    haar: FaceDetector,
) -> None:
    big = np.kron(images.astronaut(), np.ones((4, 4, 1), dtype=np.uint8))  # 2048×2048

    (faces,) = haar.detect([big])

    assert len(faces) == 1
    core = tuple(4 * v for v in images.ASTRONAUT_FACE_CORE)
    assert _contains(faces[0].box, core)  # type: ignore[arg-type]


def test_image_smaller_than_the_cascade_window_has_no_face(haar: FaceDetector) -> None:
    assert haar.detect([images.flat_image(10, 10)]) == [[]]


def test_refuses_anything_but_rgb_uint8(haar: FaceDetector) -> None:
    with pytest.raises(TypeError):
        haar.detect([images.astronaut().astype(np.float32)])
    with pytest.raises(ValueError, match="HxWx3"):
        haar.detect([images.astronaut()[:, :, 0]])


def test_confidence_mapping_is_monotonic_and_in_unit_interval() -> None:
    weights = [-1e9, -20.0, -1.0, 0.0, 0.5, 3.9, 7.4, 20.0, 1e9]
    confidences = [level_weight_to_confidence(w) for w in weights]

    assert confidences == sorted(confidences)
    assert all(0.0 <= c <= 1.0 for c in confidences)
    assert level_weight_to_confidence(0.0) == 0.5


def test_overlapping_boxes_keep_only_the_most_confident() -> None:
    strong = Detection(10, 10, 110, 110, confidence=0.9)
    nested = Detection(30, 30, 90, 90, confidence=0.95)
    apart = Detection(200, 10, 260, 70, confidence=0.6)

    kept = suppress_overlaps([strong, apart, nested], max_overlap=0.3)

    assert kept == [nested, apart]


def test_unknown_detector_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known detectors: .*haar"):
        create_detector("retinaface-that-is-not-there")


def test_registry_builds_haar_with_settings() -> None:
    detector = create_detector("haar", min_neighbors=3)

    assert "haar" in list_detectors()
    assert isinstance(detector, HaarFaceDetector)
    assert isinstance(detector, FaceDetector)
    assert detector.name == "haar" and detector.min_neighbors == 3


def test_missing_cascade_file_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import cv2

    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(RuntimeError, match="Haar cascade .* is not installed"):
        create_detector("haar")


def test_detection_rejects_empty_boxes_and_bad_confidence() -> None:
    with pytest.raises(ValueError):
        Detection(5, 5, 5, 10, confidence=0.5)
    with pytest.raises(ValueError):
        Detection(0, 0, 5, 5, confidence=1.5)


def test_ml_faces_imports_nothing_from_django() -> None:
    import subprocess
    import sys

    code = "import sys, ml.faces; sys.exit(any(m.startswith('django') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_face_crop_adds_a_margin_and_clamps_to_the_image() -> None:
    from ml.faces.crops import expand_box

    assert expand_box((100, 100, 200, 300), margin=0.25, width=1000, height=1000) == (
        75,
        50,
        225,
        350,
    )
    assert expand_box((0, 10, 50, 60), margin=0.25, width=55, height=65) == (0, 0, 55, 65)


def test_face_crop_is_downscaled_to_the_long_side_limit_but_never_upscaled() -> None:
    from PIL import Image

    from ml.faces.crops import crop_face

    photo = Image.new("RGB", (2000, 2000))
    assert crop_face(photo, (500, 500, 1500, 1000)).size == (512, 256)
    assert crop_face(photo, (100, 100, 140, 120)).size == (60, 30)
