"""The metric registry and the weights inventory behind `manage.py weights`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ml import metrics, weights
from ml.metrics import MetricUnavailable
from tests.ml import tiny_models


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # A developer's real Hugging Face cache must not make "missing" files appear.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))


def _put_in_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """The layout huggingface_hub writes: refs/main names the snapshot holding the files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, payload in files.items():
        (snapshot / name).write_bytes(payload)
    return snapshot


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
    assert absent == ("face_score", "FaceScore/FS_model.pt", False, None, None)
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


def test_hub_files_are_found_in_the_hugging_face_cache_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    staged = tmp_path / "staged"
    tiny_models.write_tiny_imagereward(staged)
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snapshot = _put_in_hf_cache(
        cache,
        "THUDM/ImageReward",
        {
            name: (staged / "ImageReward" / name).read_bytes()
            for name in ("ImageReward.pt", "med_config.json", "vision_config.json")
        },
    )
    _put_in_hf_cache(
        cache,
        "google-bert/bert-base-uncased",
        {"vocab.txt": (staged / "bert-base-uncased" / "vocab.txt").read_bytes()},
    )
    empty_weights_dir = tmp_path / "weights"
    empty_weights_dir.mkdir()

    assert weights.locate("ImageReward/ImageReward.pt", empty_weights_dir) == (
        snapshot / "ImageReward.pt"
    )
    metric = metrics.create("imagereward", weights_dir=empty_weights_dir)
    assert (
        metric.weights_sha256
        == hashlib.sha256((snapshot / "ImageReward.pt").read_bytes()).hexdigest()
    )
    rows = {
        row.file: row
        for row in weights.describe_all(empty_weights_dir)
        if row.metric == "imagereward"
    }
    assert all(row.present for row in rows.values())


def test_the_weights_dir_wins_over_the_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _put_in_hf_cache(cache, "THUDM/ImageReward", {"ImageReward.pt": b"not this one"})
    checkpoint = tiny_models.write_tiny_imagereward(tmp_path / "weights")
    assert weights.locate("ImageReward/ImageReward.pt", tmp_path / "weights") == checkpoint


def test_listing_metrics_and_their_files_does_not_import_torch():
    # `manage.py weights` and the web process list metrics; only workers should pay for torch.
    import subprocess
    import sys

    code = (
        "import sys, ml.metrics, ml.weights; ml.weights.describe_all('/nonexistent'); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_dtype_policy_is_fp32_on_cpu_and_half_on_cuda():
    import torch

    from ml.devices import resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype(cpu, None) == torch.float32
    assert resolve_dtype(cpu, None, cuda_default=torch.float16) == torch.float32
    assert resolve_dtype(cpu, "bf16") == torch.bfloat16
    assert resolve_dtype(torch.device("cuda"), None, cuda_default=torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype(cpu, "float8")
