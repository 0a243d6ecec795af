"""MagFace and CR-FIQA face-quality metrics on tiny iResNets in the official checkpoint formats."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from ml import metrics
from ml.metrics import CheckpointMismatch
from ml.metrics.fqa import ARCFACE_TEMPLATE, align_face, aligned_face_crops
from tests.ml import tiny_models
from tests.parity import inputs

FQA_REFERENCE = Path(__file__).resolve().parents[1] / "parity" / "fqa_reference.json"


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    tiny_models.write_tiny_magface(root, seed=inputs.MAGFACE_SEED)
    tiny_models.write_tiny_cr_fiqa(root, seed=inputs.CR_FIQA_SEED)
    return root


@pytest.fixture(scope="module")
def magface(weights_dir: Path) -> metrics.Metric:
    return metrics.create("magface", weights_dir=weights_dir)


@pytest.fixture(scope="module")
def cr_fiqa(weights_dir: Path) -> metrics.Metric:
    return metrics.create("cr_fiqa", weights_dir=weights_dir)


def _faces() -> list[Image.Image]:
    photos = inputs.images()
    return [photos[name].crop(box) for name, box in inputs.FQA_CROPS.items()]


def test_fqa_metrics_match_upstream_code(magface, cr_fiqa):
    """Against upstream iResNets, MagFace's clean_dict_inf loading and both preprocessings
    (`tests/parity/make_fqa_reference.py`)."""
    reference = json.loads(FQA_REFERENCE.read_text())
    rows = reference["faces"]
    faces = _faces()
    torch.testing.assert_close(
        magface.score(faces), torch.tensor([row["magface"] for row in rows]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        cr_fiqa.score(faces), torch.tensor([row["cr_fiqa"] for row in rows]), atol=1e-4, rtol=0
    )


def test_tiny_weights_are_those_of_the_reference(tmp_path: Path):
    reference = json.loads(FQA_REFERENCE.read_text())["weights_digest"]
    magface_file = tiny_models.write_tiny_magface(tmp_path, seed=inputs.MAGFACE_SEED)
    cr_file = tiny_models.write_tiny_cr_fiqa(tmp_path, seed=inputs.CR_FIQA_SEED)
    state = torch.load(magface_file, weights_only=True)["state_dict"]
    assert inputs.state_dict_digest(state) == reference["magface"]
    assert inputs.state_dict_digest(torch.load(cr_file, weights_only=True)) == reference["cr_fiqa"]


def test_batched_scores_equal_one_at_a_time_scores(magface, cr_fiqa):
    faces = _faces()
    for metric in (magface, cr_fiqa):
        single = torch.cat([metric.score([face]) for face in faces])
        torch.testing.assert_close(metric.score(faces), single, atol=1e-5, rtol=0)


def test_magface_reads_bgr_and_cr_fiqa_rgb(magface, cr_fiqa):
    face = _faces()[0]
    swapped = Image.fromarray(np.asarray(face)[..., ::-1].copy())
    # Channel order changes the numbers: each model gets the order it was trained on.
    assert not torch.allclose(magface.score([face]), magface.score([swapped]))
    assert not torch.allclose(cr_fiqa.score([face]), cr_fiqa.score([swapped]))


def test_magface_accepts_ddp_prefixes_and_drops_only_the_classifier(tmp_path: Path, magface):
    tiny_models.write_tiny_magface(tmp_path, seed=inputs.MAGFACE_SEED, prefix="module.features.")
    ddp = metrics.create("magface", weights_dir=tmp_path)
    torch.testing.assert_close(ddp.score(_faces()), magface.score(_faces()))


def test_magface_checkpoint_with_stray_keys_is_rejected(tmp_path: Path):
    checkpoint = tiny_models.write_tiny_magface(tmp_path)
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"]["margin.weight"] = torch.zeros(3)
    torch.save(payload, checkpoint)
    with pytest.raises(CheckpointMismatch, match="neither backbone .* nor classifier: \\['margin"):
        metrics.create("magface", weights_dir=tmp_path)


def test_cr_fiqa_checkpoint_without_quality_head_is_rejected(tmp_path: Path):
    checkpoint = tiny_models.write_tiny_cr_fiqa(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    del state["qs.weight"], state["qs.bias"]
    torch.save(state, checkpoint)
    with pytest.raises(CheckpointMismatch, match="2 missing keys: qs.weight, qs.bias"):
        metrics.create("cr_fiqa", weights_dir=tmp_path)


def test_full_size_backbone_is_iresnet_100(tmp_path: Path):
    from ml.metrics.fqa import IResNet, IResNetConfig

    with torch.device("meta"):
        model = IResNet(IResNetConfig(quality_head=True))
    shapes = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert shapes == tiny_models.iresnet_shapes(
        [3, 13, 30, 3], [64, 128, 256, 512], 512, quality_head=True
    )


def test_align_face_maps_template_landmarks_to_the_same_pixels():
    face = Image.fromarray(skdata.astronaut()).crop((185, 40, 297, 152))
    assert np.array_equal(np.asarray(align_face(face, ARCFACE_TEMPLATE)), np.asarray(face))


def test_align_face_undoes_a_translation():
    photo = Image.fromarray(skdata.astronaut())
    landmarks = ARCFACE_TEMPLATE + np.array([185.0, 40.0], dtype=np.float32)
    aligned = align_face(photo, landmarks)
    assert aligned.size == (112, 112)
    expected = np.asarray(photo.crop((185, 40, 297, 152))).astype(int)
    assert np.abs(np.asarray(aligned).astype(int) - expected).max() <= 1


def test_detections_are_aligned_when_they_have_landmarks_and_box_cropped_otherwise():
    photo = Image.fromarray(skdata.astronaut())
    landmarks = [tuple(point) for point in ARCFACE_TEMPLATE + np.array([185.0, 40.0])]
    with_landmarks = SimpleNamespace(
        box=(190.0, 45.0, 290.0, 150.0), confidence=0.9, landmarks=landmarks
    )
    without = SimpleNamespace(box=(10.2, 20.0, 60.0, 90.0), confidence=0.4, landmarks=None)

    aligned, boxed = aligned_face_crops(photo, [with_landmarks, without])
    assert aligned.image.size == (112, 112) and aligned.confidence == 0.9
    assert boxed.image.size == (50, 70) and boxed.box == (10.2, 20.0, 60.0, 90.0)
