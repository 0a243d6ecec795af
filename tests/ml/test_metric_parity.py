"""Our ImageReward / Face Score / HPS v2 / aesthetic against upstream code, on the same weights.

The reference numbers come from `tests/parity/make_*_reference.py`, which run THUDM ImageReward's,
OPPO FaceScore's, tgxs002 HPSv2's and OpenAI CLIP's own code (in a side venv with transformers
4.x) on the tiny checkpoints `tests/ml/tiny_models.py` writes; upstream loaded them strictly.
See tests/parity/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml import metrics
from ml.metrics.imagereward import crop_face, tokenize
from ml.metrics.preprocess import hps_letterbox
from tests.ml import tiny_models
from tests.parity import inputs

REFERENCE = Path(__file__).resolve().parents[1] / "parity" / "imagereward_reference.json"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory, reference: dict) -> Path:
    root = tmp_path_factory.mktemp("weights")
    ir = tiny_models.write_tiny_imagereward(root, seed=inputs.IMAGEREWARD_SEED)
    fs = tiny_models.write_tiny_face_score(root, seed=inputs.FACE_SCORE_SEED)
    for name, checkpoint in (("imagereward", ir), ("face_score", fs)):
        digest = inputs.state_dict_digest(torch.load(checkpoint, weights_only=True))
        assert digest == reference["weights_digest"][name], (
            f"tiny {name} weights differ from those the reference was computed with (a torch RNG "
            "change?); rerun tests/parity/make_imagereward_reference.py"
        )
    return root


def test_image_reward_matches_upstream(weights_dir: Path, reference: dict):
    metric = metrics.create("imagereward", weights_dir=weights_dir)
    images = inputs.images()
    rows = reference["imagereward"]

    ids, _ = tokenize(metric.tokenizer, [row["prompt"] for row in rows])
    assert ids.tolist() == [row["input_ids"] for row in rows]
    assert (
        metric.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"])
        == reference["blip_special_token_ids"]
    )

    scores = metric.score([(images[row["image"]], row["prompt"]) for row in rows])
    expected = torch.tensor([row["score"] for row in rows])
    assert (scores - expected).abs().max() < TOLERANCE, (scores, expected)


def test_face_score_matches_upstream_crops_and_scores(weights_dir: Path, reference: dict):
    metric = metrics.create("face_score", weights_dir=weights_dir)
    images = inputs.images()
    rows = reference["face_score"]

    crops = [crop_face(images[row["image"]], row["box"]) for row in rows]
    assert [list(crop.size) for crop in crops] == [row["crop_size"] for row in rows]
    scores = metric.score(crops)
    expected = torch.tensor([row["score"] for row in rows])
    assert (scores - expected).abs().max() < TOLERANCE, (scores, expected)


HPS_REFERENCE = Path(__file__).resolve().parents[1] / "parity" / "hps_reference.json"


def test_hps_v2_matches_upstream(tmp_path: Path):
    """Against tgxs002/HPSv2's own open_clip fork, transform and tokenizer
    (`tests/parity/make_hps_reference.py`)."""
    reference = json.loads(HPS_REFERENCE.read_text())
    checkpoint = tiny_models.write_tiny_hps(tmp_path, version="v2", seed=inputs.HPS_SEED)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert inputs.state_dict_digest(state) == reference["weights_digest"], (
        "tiny HPS weights differ from those of the reference; rerun make_hps_reference.py"
    )
    metric = metrics.create("hps_v2", weights_dir=tmp_path)
    images = inputs.images()
    rows = reference["hps_v2"]

    assert metric.tokenizer([row["prompt"] for row in rows]).tolist() == [
        row["tokens"] for row in rows
    ]
    pixel_sums = [float(hps_letterbox(images[row["image"]]).double().sum()) for row in rows]
    assert pixel_sums == pytest.approx([row["pixels_sum"] for row in rows], abs=1e-2)
    scores = metric.score([(images[row["image"]], row["prompt"]) for row in rows])
    expected = torch.tensor([row["score"] for row in rows])
    assert (scores - expected).abs().max() < TOLERANCE, (scores, expected)


AESTHETIC_REFERENCE = Path(__file__).resolve().parents[1] / "parity" / "aesthetic_reference.json"


def test_aesthetic_matches_upstream_on_openais_clip_archive(tmp_path: Path):
    """Against OpenAI's `clip.load` + `simple_inference.py`'s normalisation and MLP
    (`tests/parity/make_aesthetic_reference.py`); checks QuickGELU and the TorchScript path."""
    reference = json.loads(AESTHETIC_REFERENCE.read_text())
    _, head_file = tiny_models.write_tiny_aesthetic(
        tmp_path, seed=inputs.AESTHETIC_SEED, openai_torchscript=True
    )
    clip_state = tiny_models.tiny_open_clip_state_dict(
        inputs.AESTHETIC_SEED, quick_gelu=True, config=tiny_models.TINY_OPENAI_CLIP
    )
    digests = {
        "clip": inputs.state_dict_digest(clip_state),
        "head": inputs.state_dict_digest(torch.load(head_file, weights_only=True)),
    }
    assert digests == reference["weights_digest"], "rerun make_aesthetic_reference.py"
    metric = metrics.create("aesthetic", weights_dir=tmp_path)
    images = inputs.images()
    rows = reference["aesthetic"]

    scores = metric.score([images[row["image"]] for row in rows])
    expected = torch.tensor([row["score"] for row in rows])
    assert (scores - expected).abs().max() < TOLERANCE, (scores, expected)
