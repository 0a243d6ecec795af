"""The metric registry and the weights inventory behind `manage.py weights`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ml import metrics, weights
from ml.metrics import MetricUnavailable
from tests.ml import tiny_models


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(KeyError, match="known metrics: .*imagereward.*face_score"):
        metrics.create("image_reward_v9")


def test_missing_weights_make_the_metric_unavailable_naming_each_file(tmp_path: Path):
    with pytest.raises(MetricUnavailable) as error:
        metrics.create("imagereward", weights_dir=tmp_path)

    message = str(error.value)
    assert f"weights dir {tmp_path}" in message
    for relative in (
        "ImageReward/ImageReward.pt",
        "ImageReward/med_config.json",
        "bert-base-uncased/vocab.txt",
    ):
        assert str(tmp_path / relative) in message
    assert error.value.missing == [
        tmp_path / rel for rel in metrics.get_spec("imagereward").required_files
    ]


def test_only_the_files_that_are_missing_are_named(tmp_path: Path):
    tiny_models.write_tiny_imagereward(tmp_path)
    (tmp_path / "ImageReward" / "med_config.json").unlink()

    with pytest.raises(MetricUnavailable) as error:
        metrics.create("imagereward", weights_dir=tmp_path)
    assert error.value.missing == [tmp_path / "ImageReward" / "med_config.json"]


def test_weights_dir_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACEBENCH_WEIGHTS_DIR", str(tmp_path))
    assert weights.default_weights_dir() == tmp_path
    with pytest.raises(MetricUnavailable, match=str(tmp_path)):
        metrics.create("face_score")


def test_registry_lists_level_and_direction_of_each_metric():
    for name in metrics.available():
        spec = metrics.get_spec(name)
        assert spec.level in ("image", "face")
        assert isinstance(spec.higher_is_better, bool)


def test_describe_all_lists_every_expected_file_with_presence_and_digest(tmp_path: Path):
    checkpoint = tiny_models.write_tiny_imagereward(tmp_path)
    rows = {(row.metric, row.file): row for row in weights.describe_all(tmp_path)}

    present = rows[("imagereward", "ImageReward/ImageReward.pt")]
    assert present.present
    assert present.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert present.size == checkpoint.stat().st_size
    absent = rows[("face_score", "FaceScore/FS_model.pt")]
    assert absent.as_tuple() == ("face_score", "FaceScore/FS_model.pt", False, None, None)
    expected = {
        (name, rel) for name in metrics.available() for rel in metrics.get_spec(name).required_files
    }
    assert set(rows) == expected


def test_digests_are_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 1000)
    first = weights.sha256_file(path, cache_dir=tmp_path)
    assert (tmp_path / weights.DIGEST_CACHE_FILENAME).is_file()

    calls = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(weights.hashlib, "sha256", lambda: calls.append(1) or real_sha256())
    weights._memory_cache.clear()
    assert weights.sha256_file(path, cache_dir=tmp_path) == first  # from the on-disk cache
    assert calls == []

    path.write_bytes(b"y" * 1001)  # new size (and mtime): hashed again
    assert weights.sha256_file(path, cache_dir=tmp_path) == real_sha256(b"y" * 1001).hexdigest()
    assert calls == [1]
