"""Our ImageReward / Face Score against the upstream code, on the same tiny random weights.

The reference numbers come from `tests/parity/make_imagereward_reference.py`, which runs
THUDM ImageReward's and OPPO FaceScore's own code (in a side venv with transformers 4.x) on the
checkpoints `tests/ml/tiny_models.py` writes; upstream loaded them with `strict=True`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml import metrics
from ml.metrics.imagereward import crop_face, tokenize
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
