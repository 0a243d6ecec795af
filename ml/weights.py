"""Where model weights live and what they are: paths, presence, sha256.

Nothing here downloads. A file a metric expects (a path relative to the weights dir) is looked up
in the weights dir first, then, for files published on the Hugging Face hub, in the standard
Hugging Face cache (what `huggingface-cli download` fills), read only. `describe_all` backs
`manage.py weights`: for every registered metric it lists each file the metric expects, whether
and where it was found, its size and its sha256. Hashing a 2 GB checkpoint takes seconds, so digests are cached by (path, size, mtime) in
memory and, best effort, in a small JSON file inside the weights dir shared by worker processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 8 * 1024 * 1024
DIGEST_CACHE_FILENAME = ".facebench-sha256.json"

_memory_cache: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def default_weights_dir() -> Path:
    """Same default as Django's `FACEBENCH_WEIGHTS_DIR` setting, without importing Django."""
    if env := os.getenv("FACEBENCH_WEIGHTS_DIR"):
        return Path(env)
    var_dir = os.getenv("FACEBENCH_VAR_DIR") or str(Path(__file__).resolve().parent.parent / "var")
    return Path(var_dir) / "weights"


def resolve_weights_dir(weights_dir: str | os.PathLike[str] | None) -> Path:
    return Path(weights_dir) if weights_dir is not None else default_weights_dir()


# Hub repos and file names of the expected files, for the read-only Hugging Face cache lookup.
HF_CACHE_SOURCES: dict[str, tuple[tuple[str, str], ...]] = {
    "ImageReward/ImageReward.pt": (("THUDM/ImageReward", "ImageReward.pt"),),
    "ImageReward/med_config.json": (("THUDM/ImageReward", "med_config.json"),),
    "FaceScore/FS_model.pt": (("AIGCer-OPPO/FaceScore", "FS_model.pt"),),
    "FaceScore/med_config.json": (("AIGCer-OPPO/FaceScore", "med_config.json"),),
    "bert-base-uncased/vocab.txt": (
        ("google-bert/bert-base-uncased", "vocab.txt"),
        ("bert-base-uncased", "vocab.txt"),
    ),
    "HPSv2/HPS_v2_compressed.pt": (("xswu/HPSv2", "HPS_v2_compressed.pt"),),
    "HPSv2/HPS_v2.1_compressed.pt": (("xswu/HPSv2", "HPS_v2.1_compressed.pt"),),
}


def hf_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, read from the environment at call time."""
    if env := os.getenv("HF_HUB_CACHE"):
        return Path(env)
    hf_home = os.getenv("HF_HOME") or os.path.join(
        os.getenv("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(hf_home) / "hub"


def locate(relative: str, weights_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Where an expected file is: the weights dir, else the Hugging Face cache, else None."""
    path = resolve_weights_dir(weights_dir) / relative
    if path.is_file():
        return path
    sources = HF_CACHE_SOURCES.get(relative, ())
    if not sources:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo_id, filename in sources:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir())
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def require(relative: str, weights_dir: str | os.PathLike[str] | None = None) -> Path:
    path = locate(relative, weights_dir)
    if path is None:
        raise FileNotFoundError(
            f"{relative} is neither in {resolve_weights_dir(weights_dir)} nor in the Hugging Face "
            f"cache {hf_cache_dir()}"
        )
    return path


def _cache_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _read_disk_cache(cache_file: Path) -> dict[str, str]:
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}


def _write_disk_cache(cache_file: Path, entries: dict[str, str]) -> None:
    # Atomic replace so concurrent workers never read a half-written file; a read-only weights
    # dir just means no persistent cache.
    try:
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=".sha256-", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle, indent=0, sort_keys=True)
        os.replace(tmp, cache_file)
    except OSError as exc:
        logger.debug("could not write digest cache %s: %s", cache_file, exc)


def sha256_file(path: str | os.PathLike[str], *, cache_dir: Path | None = None) -> str:
    """Hex sha256 of a file, read in chunks, cached by (path, size, mtime).

    `cache_dir`, when given, holds the persistent cache shared across processes (the weights dir).
    """
    path = Path(path)
    key = _cache_key(path)
    with _lock:
        if key in _memory_cache:
            return _memory_cache[key]
    disk_key = f"{key[0]}|{key[1]}|{key[2]}"
    cache_file = cache_dir / DIGEST_CACHE_FILENAME if cache_dir is not None else None
    if cache_file is not None:
        cached = _read_disk_cache(cache_file).get(disk_key)
        if cached:
            with _lock:
                _memory_cache[key] = cached
            return cached

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    with _lock:
        _memory_cache[key] = hexdigest
    if cache_file is not None and cache_file.parent.is_dir():
        entries = _read_disk_cache(cache_file)
        entries[disk_key] = hexdigest
        _write_disk_cache(cache_file, entries)
    return hexdigest


class WeightFile(NamedTuple):
    """`(metric, file, present, sha256 or None, size)`; `locate(file)` says where it is."""

    metric: str
    file: str  # relative to the weights dir
    present: bool
    sha256: str | None
    size: int | None


def describe_all(
    weights_dir: str | os.PathLike[str] | None = None, *, with_sha256: bool = True
) -> list[WeightFile]:
    """One row per (metric, expected file), in registry order; absent files have no digest/size."""
    from ml import metrics  # the registry imports this module; import lazily to avoid a cycle

    root = resolve_weights_dir(weights_dir)
    rows: list[WeightFile] = []
    for name in metrics.available():
        for relative in metrics.get_spec(name).required_files:
            path = locate(relative, root)
            if path is not None:
                digest = sha256_file(path, cache_dir=root) if with_sha256 else None
                size = path.stat().st_size
                rows.append(WeightFile(name, relative, True, digest, size))
            else:
                rows.append(WeightFile(name, relative, False, None, None))
    return rows
