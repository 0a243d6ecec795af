"""Import generations (images + their prompt, DM and seed) into a dataset, refusing bad input clearly.

An import reads a manifest (JSONL or CSV, one row per image) and the images it names, from a
folder, a zip, or a set of uploaded files. Algorithm:

1. Open the source. A zip is checked as a whole first: an entry with an absolute path, a ``..``
   component or a symlink, or too many entries / too many uncompressed bytes, refuses the whole
   upload (``ImportRejected``) before anything is written.
2. Parse the manifest (strict UTF-8; a decoding error refuses the whole manifest). Each row is
   checked on its own; a bad row is reported by row and file name, and the others go on.
3. For each good row: read the image with a byte cap, validate and normalise it
   (:func:`validate_image`: real format by content, pixel limit from the header before decoding,
   verify + full load, EXIF rotation, 8-bit RGB, stored as PNG), skip it as a duplicate if the
   dataset (or this upload) already holds the same PNG bytes, otherwise save it through the
   storage API and create its ``Generation`` in its own small transaction.
4. Return an :class:`ImportReport`: counts, and the reason for every rejected or duplicate file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import stat
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from annotator.models import Dataset, Generation

logger = logging.getLogger(__name__)

# Pillow format names accepted, and how they are named in messages.
ACCEPTED_FORMATS = {
    "PNG": "PNG",
    "JPEG": "JPEG",
    "WEBP": "WebP",
    "GIF": "GIF",
    "BMP": "BMP",
    "TIFF": "TIFF",
}
ACCEPTED_LIST = ", ".join(ACCEPTED_FORMATS.values())
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".csv")
REQUIRED_COLUMNS = ("file", "prompt", "model")
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, "model_version", "seed", "sampler")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PROGRESS_INTERVAL_S = 0.5

ProgressCallback = Callable[[int, int], None]


def max_zip_entries() -> int:
    return int(getattr(settings, "FACEBENCH_MAX_ZIP_ENTRIES", 100_000))


class ImageRejected(Exception):
    """One image refused; ``reason`` is a sentence for the person who uploaded it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImportRejected(Exception):
    """A whole upload or manifest refused; nothing was imported."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- one image ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidImage:
    name: str
    png_bytes: bytes
    sha256: str
    width: int
    height: int
    source_format: str  # what the upload really was, by content


def human_bytes(size: int) -> str:
    if size < 10_000:
        return f"{size:,} bytes"
    if size < 10_000_000:
        return f"{size / 1e3:,.0f} kB"
    return f"{size / 1e6:,.0f} MB"


def _read_capped(data: bytes | IO[bytes], *, name: str, limit: int) -> bytes:
    """All bytes of ``data``, refusing it as soon as it is known to be over ``limit``."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > limit:
            # Sources read limit + 1 bytes at most, so that length says "over", not the size.
            raise ImageRejected(_too_big(name, len(raw) if len(raw) > limit + 1 else None, limit))
        return raw
    size = getattr(data, "size", None)
    if isinstance(size, int) and size > limit:
        raise ImageRejected(_too_big(name, size, limit))
    raw = data.read(limit + 1)
    if len(raw) > limit:
        raise ImageRejected(_too_big(name, None, limit))
    return raw


def _too_big(name: str, size: int | None, limit: int) -> str:
    shown = f" ({human_bytes(size)})" if size is not None else ""
    return f"{name} is too large{shown}; the limit is {human_bytes(limit)} per image."


def _sniff_non_image(raw: bytes, name: str) -> str | None:
    """A specific reason for the common non-images, or None to let Pillow decide."""
    if not raw:
        return f"{name} is empty (0 bytes)."
    head = raw[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (
        head.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in raw[:8192].lower()
    ):
        return (
            f"{name} is an SVG (vector) image; only raster images ({ACCEPTED_LIST}) are accepted."
        )
    if b"\x00" not in raw[:8192]:
        try:
            raw[:8192].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return f"{name} is a text file, not an image (accepted: {ACCEPTED_LIST})."
    return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow mode, keeping grey levels and flattening alpha onto white."""
    import numpy as np

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey: scale 0–65535 to 0–255. Pillow's convert("L") clips instead, which turns
        # everything above 255 (nearly the whole picture) white.
        levels = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(levels / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.rint(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def validate_image(data: bytes | IO[bytes], *, name: str) -> ValidImage:
    """Check and normalise one uploaded image, or raise ``ImageRejected`` with the reason.

    Animated (or multi-page) images are refused rather than cut to their first frame: a judge
    would rate a frame the DM's user never saw as "the" image.
    """
    max_bytes = settings.FACEBENCH_MAX_IMAGE_BYTES
    max_pixels = settings.FACEBENCH_MAX_IMAGE_PIXELS
    raw = _read_capped(data, name=name, limit=max_bytes)
    reason = _sniff_non_image(raw, name)
    if reason:
        raise ImageRejected(reason)

    # Pillow warns (DecompressionBombWarning) or raises (DecompressionBombError) on its own
    # limit; both, and every decoder error, become a rejection with a sentence.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            probe = Image.open(io.BytesIO(raw), formats=list(ACCEPTED_FORMATS))
        except UnidentifiedImageError:
            raise ImageRejected(
                f"{name} is not an image in an accepted format ({ACCEPTED_LIST})."
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(
                f"{name} has too many pixels to decode safely (decompression bomb?): {exc}"
            ) from None
        except Exception as exc:  # a corrupt header can raise nearly anything
            raise ImageRejected(f"{name} could not be read as an image: {exc}") from None

        source_format = probe.format or "?"
        width, height = probe.size
        # The header's size is checked before a single pixel is decoded.
        if width * height > max_pixels:
            raise ImageRejected(
                f"{name} is {width}×{height} = {width * height:,} pixels; the limit is "
                f"{max_pixels:,} pixels (a huge or decompression-bomb image)."
            )
        try:
            frames = getattr(probe, "n_frames", 1)
        except Exception as exc:
            raise ImageRejected(f"{name} is corrupt: {exc}") from None
        if frames > 1:
            raise ImageRejected(
                f"{name} is an animated or multi-page {ACCEPTED_FORMATS.get(source_format, source_format)} "
                f"({frames} frames); only still images are accepted."
            )
        try:
            probe.verify()
            # verify() leaves the image unusable; decode it in full from a fresh open.
            image: Image.Image = Image.open(io.BytesIO(raw), formats=[source_format])
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            if previous:  # someone switched it on globally; truncated files must still fail
                ImageFile.LOAD_TRUNCATED_IMAGES = False
            try:
                image.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(f"{name} has too many pixels to decode safely: {exc}") from None
        except Exception as exc:
            raise ImageRejected(f"{name} is truncated or corrupt: {exc}") from None

    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block should not lose the image; keep it as stored
        logger.warning("%s: could not apply EXIF orientation", name, exc_info=True)
    rgb = _to_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    png_bytes = buffer.getvalue()
    return ValidImage(
        name=name,
        png_bytes=png_bytes,
        sha256=hashlib.sha256(png_bytes).hexdigest(),
        width=rgb.width,
        height=rgb.height,
        source_format=source_format,
    )


# --- manifests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    row: int  # line number in the manifest file (CSV: the header is line 1)
    file: str
    prompt: str
    model_name: str
    model_version: str = ""
    seed: int | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowError:
    row: int
    file: str
    reason: str


def safe_relative_path(value: str) -> str | None:
    """``value`` as a clean relative POSIX path, or None if it is absolute or climbs out."""
    candidate = value.replace("\\", "/")
    path = PurePosixPath(candidate)
    if (
        not candidate
        or path.is_absolute()
        or (len(candidate) > 1 and candidate[1] == ":")  # C:/…
        or any(part == ".." for part in path.parts)
    ):
        return None
    parts = [p for p in path.parts if p not in ("", ".")]
    return "/".join(parts) if parts else None


def _decode_manifest(data: bytes, name: str) -> str:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ImportRejected(
            f"The manifest {name} is larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MB."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ImportRejected(
            f"The manifest {name} is not valid UTF-8: byte 0x{data[exc.start]:02x} at line {line}, "
            f"column {column} (byte offset {exc.start}). Save it as UTF-8 and upload it again."
        ) from None
    return text.removeprefix("\ufeff")


def _check_row(row: int, values: dict[str, Any], *, from_csv: bool) -> ManifestRow | RowError:
    file_value = values.get("file")
    file_name = file_value if isinstance(file_value, str) else ""
    missing = [c for c in REQUIRED_COLUMNS if values.get(c) in (None, "")]
    if "prompt" in missing and isinstance(values.get("prompt"), str):
        return RowError(row, file_name, "the prompt is empty.")
    if missing:
        return RowError(row, file_name, f"missing required field(s): {', '.join(missing)}.")
    for column in ("file", "prompt", "model"):
        if not isinstance(values[column], str):
            return RowError(row, file_name, f"{column} must be a string.")
    relative = safe_relative_path(file_name.strip())
    if relative is None:
        return RowError(
            row, file_name, "the file path is absolute or escapes the import folder ('..')."
        )
    prompt = values["prompt"]
    if not prompt.strip():
        return RowError(row, file_name, "the prompt is empty.")
    limit = settings.FACEBENCH_MAX_PROMPT_CHARS
    if len(prompt) > limit:
        return RowError(
            row,
            file_name,
            f"the prompt is {len(prompt):,} characters long; the limit is {limit:,}.",
        )
    model_name = values["model"].strip()
    if not model_name:
        return RowError(row, file_name, "the model name is empty.")
    if len(model_name) > 200:
        return RowError(row, file_name, "the model name is longer than 200 characters.")
    model_version = values.get("model_version") or ""
    if not isinstance(model_version, str | int | float) or len(str(model_version)) > 200:
        return RowError(row, file_name, "model_version must be a short string.")

    seed_value = values.get("seed")
    seed: int | None = None
    if seed_value not in (None, ""):
        if isinstance(seed_value, bool):
            seed_ok = False
        elif isinstance(seed_value, int):
            seed, seed_ok = seed_value, True
        elif isinstance(seed_value, str) and seed_value.strip().lstrip("+-").isdigit():
            seed, seed_ok = int(seed_value.strip()), True
        else:
            seed_ok = False
        if not seed_ok:
            return RowError(row, file_name, f"seed must be an integer, got {seed_value!r}.")
        if seed is not None and not INT64_MIN <= seed <= INT64_MAX:
            return RowError(row, file_name, f"seed {seed} does not fit in a signed 64-bit integer.")

    sampler_value = values.get("sampler")
    sampler: dict[str, Any] = {}
    if sampler_value not in (None, ""):
        if from_csv and isinstance(sampler_value, str):
            try:
                sampler_value = json.loads(sampler_value)
            except json.JSONDecodeError:
                return RowError(
                    row, file_name, 'sampler must be a JSON object (e.g. {"steps": 30}).'
                )
        if not isinstance(sampler_value, dict):
            return RowError(row, file_name, 'sampler must be a JSON object (e.g. {"steps": 30}).')
        sampler = sampler_value

    extra = {k: v for k, v in values.items() if k not in KNOWN_COLUMNS and k is not None}
    return ManifestRow(
        row=row,
        file=relative,
        prompt=prompt,
        model_name=model_name,
        model_version=str(model_version).strip(),
        seed=seed,
        sampler=sampler,
        extra=extra,
    )


def parse_manifest(data: bytes, *, name: str) -> tuple[list[ManifestRow], list[RowError]]:
    """Rows of a JSONL or CSV manifest (chosen by ``name``'s extension) and the rows refused."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ImportRejected(f"The manifest {name} must be a .jsonl (JSON lines) or .csv file.")
    text = _decode_manifest(data, name)
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        absent = [c for c in REQUIRED_COLUMNS if c not in header]
        if absent:
            raise ImportRejected(
                f"The manifest {name} has no column(s) {', '.join(absent)}; required columns "
                f"are {', '.join(REQUIRED_COLUMNS)}."
            )
        reader.fieldnames = header
        try:
            for record in reader:
                line = reader.line_num
                if None in record:  # more cells than header columns
                    errors.append(
                        RowError(
                            line,
                            record.get("file") or "",
                            "the row has more cells than the header.",
                        )
                    )
                    continue
                if not any((v or "").strip() for v in record.values()):
                    continue
                checked = _check_row(line, dict(record), from_csv=True)
                (errors if isinstance(checked, RowError) else rows).append(checked)  # type: ignore[arg-type]
        except csv.Error as exc:
            raise ImportRejected(
                f"The manifest {name} is not valid CSV (line {reader.line_num}): {exc}"
            ) from None
    else:
        for number, line_text in enumerate(text.splitlines(), start=1):
            if not line_text.strip():
                continue
            try:
                values = json.loads(line_text)
            except json.JSONDecodeError as exc:
                errors.append(RowError(number, "", f"line {number} is not valid JSON: {exc.msg}."))
                continue
            if not isinstance(values, dict):
                errors.append(RowError(number, "", f"line {number} is not a JSON object."))
                continue
            checked = _check_row(number, values, from_csv=False)
            (errors if isinstance(checked, RowError) else rows).append(checked)  # type: ignore[arg-type]
    if not rows and not errors:
        raise ImportRejected(f"The manifest {name} lists no images.")
    return rows, errors


# --- sources: a folder, a zip, a set of uploaded files --------------------------------------


class ImportSource(Protocol):
    description: str

    def manifest(self) -> tuple[str, bytes]:
        """The manifest's name and bytes."""
        ...

    def read(self, relative_path: str) -> bytes:
        """An image's bytes (at most the image byte limit + 1); FileNotFoundError if absent."""
        ...


def _pick_manifest(names: Iterable[str], where: str) -> str:
    names = list(names)
    for preferred in MANIFEST_NAMES:
        if preferred in names:
            return preferred
    candidates = [n for n in names if PurePosixPath(n).suffix.lower() in MANIFEST_SUFFIXES]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ImportRejected(
            f"No manifest found at the root of {where}: add manifest.jsonl or manifest.csv."
        )
    raise ImportRejected(
        f"Several possible manifests at the root of {where} ({', '.join(sorted(candidates))}); "
        "name the one to use manifest.jsonl or manifest.csv."
    )


class FolderSource:
    def __init__(self, folder: Path, manifest: Path | None = None) -> None:
        self.root = Path(folder).resolve()
        if not self.root.is_dir():
            raise ImportRejected(f"{folder} is not a folder.")
        self.description = str(folder)
        if manifest is None:
            names = [p.name for p in self.root.iterdir() if p.is_file()]
            manifest = self.root / _pick_manifest(names, f"the folder {folder}")
        self.manifest_path = Path(manifest)

    def manifest(self) -> tuple[str, bytes]:
        try:
            with open(self.manifest_path, "rb") as fh:
                return self.manifest_path.name, fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise ImportRejected(f"Cannot read the manifest {self.manifest_path}: {exc}") from None

    def read(self, relative_path: str) -> bytes:
        path = (self.root / relative_path).resolve()
        # A symlink inside the folder must not reach files outside it.
        if not path.is_relative_to(self.root):
            raise ImageRejected(f"{relative_path} points outside the import folder.")
        if not path.is_file():
            raise FileNotFoundError(relative_path)
        with open(path, "rb") as fh:
            return fh.read(settings.FACEBENCH_MAX_IMAGE_BYTES + 1)


class ZipSource:
    """A zip read entry by entry with byte caps; refused as a whole if any entry is unsafe."""

    def __init__(self, fileobj: IO[bytes], *, name: str = "the zip") -> None:
        self.description = name
        try:
            self.archive = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ImportRejected(f"{name} is not a valid zip file: {exc}") from None
        infos = self.archive.infolist()
        if len(infos) > max_zip_entries():
            raise ImportRejected(
                f"{name} has {len(infos):,} entries; the limit is {max_zip_entries():,}."
            )
        total = 0
        self.entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            raw_name = info.filename
            if info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16):
                raise ImportRejected(
                    f"{name} contains a symbolic link ({raw_name}); links are not allowed."
                )
            cleaned = raw_name.replace("\\", "/")
            if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":"):
                raise ImportRejected(
                    f"{name} contains an entry with an absolute path ({raw_name})."
                )
            if ".." in PurePosixPath(cleaned).parts:
                raise ImportRejected(
                    f"{name} contains an entry whose path climbs out of the archive ({raw_name}, '..'); "
                    "nothing was imported."
                )
            total += info.file_size
            if info.is_dir():
                continue
            relative = safe_relative_path(cleaned)
            if relative:
                self.entries[relative] = info
        limit = settings.FACEBENCH_MAX_UPLOAD_BYTES
        if total > limit:
            raise ImportRejected(
                f"{name} would unpack to {human_bytes(total)}; the limit is {human_bytes(limit)}."
            )

    def _read_entry(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        # The sizes in the directory can lie; read at most limit + 1 bytes whatever they say.
        try:
            with self.archive.open(info) as fh:
                return fh.read(limit + 1)
        except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
            raise ImageRejected(f"{info.filename} could not be read from the zip: {exc}") from None

    def manifest(self) -> tuple[str, bytes]:
        root_files = [n for n in self.entries if "/" not in n]
        try:
            name = _pick_manifest(root_files, self.description)
        except ImportRejected as exc:
            nested = sorted(n for n in self.entries if PurePosixPath(n).name in MANIFEST_NAMES)
            if nested and not root_files:
                # The usual mistake: zipping the folder instead of its contents.
                raise ImportRejected(
                    f"{exc.reason} Found {nested[0]} in a subfolder: zip the folder's contents, "
                    "not the folder itself."
                ) from None
            raise
        data = self._read_entry(self.entries[name], MAX_MANIFEST_BYTES)
        return name, data

    def read(self, relative_path: str) -> bytes:
        info = self.entries.get(relative_path)
        if info is None:
            raise FileNotFoundError(relative_path)
        return self._read_entry(info, settings.FACEBENCH_MAX_IMAGE_BYTES)


class FileSetSource:
    """A manifest and images uploaded side by side (browsers send base names only)."""

    def __init__(
        self, manifest: IO[bytes], images: Sequence[IO[bytes]], *, manifest_name: str = ""
    ) -> None:
        self.description = "the uploaded files"
        self.manifest_file = manifest
        self.manifest_name = (
            manifest_name or PurePosixPath(getattr(manifest, "name", "") or "manifest.jsonl").name
        )
        self.images: dict[str, IO[bytes]] = {}
        for image in images:
            self.images.setdefault(PurePosixPath(str(getattr(image, "name", ""))).name, image)

    def manifest(self) -> tuple[str, bytes]:
        self.manifest_file.seek(0)
        return self.manifest_name, self.manifest_file.read(MAX_MANIFEST_BYTES + 1)

    def read(self, relative_path: str) -> bytes:
        image = self.images.get(relative_path) or self.images.get(PurePosixPath(relative_path).name)
        if image is None:
            raise FileNotFoundError(relative_path)
        image.seek(0)
        return image.read(settings.FACEBENCH_MAX_IMAGE_BYTES + 1)


def open_source(
    source: Path | str | ImportSource | IO[bytes], *, manifest: Path | None = None
) -> ImportSource:
    """A folder, a .zip path or an open zip file as an ``ImportSource`` (sources pass through)."""
    if not isinstance(source, str | Path):
        if hasattr(source, "manifest"):
            return source  # type: ignore[return-value]
        # An uploaded (or otherwise opened) zip file.
        return ZipSource(
            source, name=PurePosixPath(str(getattr(source, "name", "") or "the zip")).name
        )
    path = Path(source)
    if path.is_dir():
        return FolderSource(path, manifest)
    if path.suffix.lower() == ".zip" and path.is_file():
        return ZipSource(open(path, "rb"), name=path.name)  # noqa: SIM115  (closed with the archive)
    raise ImportRejected(f"{path} is neither a folder nor a .zip file.")


# --- the import service ---------------------------------------------------------------------


@dataclass
class ImportReport:
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    # Every file not imported: {"file", "row", "status": "rejected" | "duplicate", "reason"}.
    problems: list[dict[str, Any]] = field(default_factory=list)
    generation_ids: list[int] = field(default_factory=list)

    def add_problem(self, status: str, row: int | None, file: str, reason: str) -> None:
        if status == "duplicate":
            self.duplicates += 1
        else:
            self.rejected += 1
        self.problems.append({"file": file, "row": row, "status": status, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        # Generation ids stay out of job results: a large import would bloat every job page.
        data = asdict(self)
        data.pop("generation_ids")
        return data


def _create_generation(*, dataset: Dataset, row: ManifestRow, image: ValidImage) -> Generation:
    generation = Generation(
        dataset=dataset,
        sha256=image.sha256,
        width=image.width,
        height=image.height,
        original_filename=row.file[:500],
        prompt=row.prompt,
        model_name=row.model_name,
        model_version=row.model_version,
        seed=row.seed,
        sampler=row.sampler,
        extra=row.extra,
        source=Generation.Source.IMPORTED,
    )
    # Written before the row so the row never points at a missing file; storage never
    # overwrites, so on failure the file we wrote is ours alone to delete.
    generation.image.save(f"{image.sha256}.png", ContentFile(image.png_bytes), save=False)
    # ImageField's width/height fields are refreshed from the file on save and come back
    # empty for in-memory content; the validated size is the truth.
    generation.width, generation.height = image.width, image.height
    try:
        with transaction.atomic():
            generation.save()
    except BaseException:
        generation.image.delete(save=False)
        raise
    return generation


def import_generations(
    *,
    dataset: Dataset,
    source: Path | str | ImportSource | IO[bytes],
    created_by: Any = None,
    manifest: Path | None = None,
    progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import the generations a manifest lists into ``dataset``; see the module docstring.

    Raises ``ImportRejected`` (nothing written) when the source or the manifest as a whole is
    unusable. ``created_by`` is who asked for the import (logged).
    """
    opened = open_source(source, manifest=manifest)
    manifest_name, manifest_bytes = opened.manifest()
    rows, row_errors = parse_manifest(manifest_bytes, name=manifest_name)
    report = ImportReport()
    for error in row_errors:
        report.add_problem("rejected", error.row, error.file, error.reason)
    total = len(rows)
    logger.info(
        "import into %s from %s by %s: %d rows (%d refused in the manifest)",
        dataset,
        opened.description,
        created_by,
        total,
        len(row_errors),
    )
    if progress:
        progress(0, total)
    seen: dict[str, str] = {}  # sha256 → file, within this upload
    for done, row in enumerate(rows, start=1):
        try:
            raw = opened.read(row.file)
            image = validate_image(raw, name=row.file)
        except FileNotFoundError:
            report.add_problem(
                "rejected",
                row.row,
                row.file,
                f"{row.file} is listed in the manifest but not in the upload.",
            )
        except ImageRejected as exc:
            report.add_problem("rejected", row.row, row.file, exc.reason)
        else:
            if image.sha256 in seen:
                report.add_problem(
                    "duplicate",
                    row.row,
                    row.file,
                    f"same image as {seen[image.sha256]} earlier in this upload.",
                )
            else:
                seen[image.sha256] = row.file
                existing = (
                    Generation.objects.filter(dataset=dataset, sha256=image.sha256)
                    .values_list("pk", flat=True)
                    .first()
                )
                if existing is not None:
                    report.add_problem(
                        "duplicate",
                        row.row,
                        row.file,
                        f"already in dataset {dataset.name} (generation #{existing}).",
                    )
                else:
                    try:
                        generation = _create_generation(dataset=dataset, row=row, image=image)
                    except IntegrityError:
                        # A concurrent import stored the same image between our check and
                        # insert; any other integrity error is a bug and goes up.
                        if not Generation.objects.filter(
                            dataset=dataset, sha256=image.sha256
                        ).exists():
                            raise
                        report.add_problem(
                            "duplicate",
                            row.row,
                            row.file,
                            f"already in dataset {dataset.name} (imported concurrently).",
                        )
                    else:
                        report.imported += 1
                        report.generation_ids.append(generation.pk)
        if progress:
            progress(done, total)
    logger.info(
        "import into %s: %d imported, %d duplicates, %d rejected",
        dataset,
        report.imported,
        report.duplicates,
        report.rejected,
    )
    return report


# --- uploads as jobs ------------------------------------------------------------------------


def _store_upload(folder: str, upload: IO[bytes], fallback_name: str) -> str:
    name = PurePosixPath(str(getattr(upload, "name", "") or fallback_name)).name or fallback_name
    return default_storage.save(f"{folder}/{name}", File(upload, name=name))


def start_import_job(
    *,
    dataset: Dataset,
    created_by: Any,
    zip_file: IO[bytes] | None = None,
    manifest_file: IO[bytes] | None = None,
    image_files: Sequence[IO[bytes]] = (),
) -> Any:
    """Store an upload under ``uploads/`` through the storage API and queue its import job."""
    import uuid

    from annotator.tasks import import_generations_task
    from jobs.models import Job

    if (zip_file is None) == (manifest_file is None):
        raise ImportRejected("Upload either one .zip, or a manifest and its images.")
    sizes = [
        getattr(f, "size", 0) or 0 for f in [zip_file, manifest_file, *image_files] if f is not None
    ]
    if sum(sizes) > settings.FACEBENCH_MAX_UPLOAD_BYTES:
        raise ImportRejected(
            f"The upload is {human_bytes(sum(sizes))}; the limit is "
            f"{human_bytes(settings.FACEBENCH_MAX_UPLOAD_BYTES)}."
        )
    folder = f"uploads/{uuid.uuid4().hex}"
    if zip_file is not None:
        config: dict[str, Any] = {
            "dataset_id": dataset.pk,
            "zip": _store_upload(folder, zip_file, "upload.zip"),
        }
    else:
        assert manifest_file is not None
        manifest_name = PurePosixPath(
            str(getattr(manifest_file, "name", "") or "manifest.jsonl")
        ).name
        config = {
            "dataset_id": dataset.pk,
            "manifest": _store_upload(f"{folder}/manifest", manifest_file, "manifest.jsonl"),
            "manifest_name": manifest_name,
            "images": [_store_upload(f"{folder}/images", f, "image") for f in image_files],
        }
    config["upload_folder"] = folder
    with transaction.atomic():
        job = Job.objects.create(kind=Job.Kind.IMPORT, config=config, created_by=created_by)
        import_generations_task.delay_on_commit(job.pk)
    return job


def _delete_upload(config: dict[str, Any]) -> None:
    names = [config.get("zip"), config.get("manifest"), *config.get("images", [])]
    for name in names:
        if name:
            try:
                default_storage.delete(name)
            except Exception:  # cleanup must never fail the job
                logger.warning("could not delete upload %s", name, exc_info=True)


def run_import_job(job_id: int) -> dict[str, Any]:
    """Body of an import job: import the stored upload with progress, then queue detection."""
    from annotator.detection import start_detection_job
    from jobs import progress as job_progress
    from jobs.models import Job

    job = Job.objects.get(pk=job_id)
    config = job.config
    dataset = Dataset.objects.get(pk=config["dataset_id"])
    handles: list[Any] = []
    try:
        if config.get("zip"):
            handle = default_storage.open(config["zip"], "rb")
            handles.append(handle)
            source: ImportSource = ZipSource(handle, name=PurePosixPath(config["zip"]).name)
        else:
            manifest = default_storage.open(config["manifest"], "rb")
            handles.append(manifest)
            images = []
            for name in config.get("images", []):
                image = default_storage.open(name, "rb")
                image.name = PurePosixPath(name).name
                handles.append(image)
                images.append(image)
            source = FileSetSource(manifest, images, manifest_name=config.get("manifest_name", ""))
        last = {"total": -1, "at": 0.0}

        def report_progress(done: int, total: int) -> None:
            if total != last["total"]:
                job_progress.set_total(job_id, total)
                last["total"] = total
            # Two queries per write: a few times a second is plenty for a progress bar.
            now = time.monotonic()
            if done == total or now - last["at"] >= PROGRESS_INTERVAL_S:
                job_progress.advance(job_id, done)
                last["at"] = now

        report = import_generations(
            dataset=dataset, source=source, created_by=job.created_by, progress=report_progress
        )
    except ImportRejected:
        # Refusing the whole upload is final; a rerun would refuse it again.
        _delete_upload(config)
        raise
    finally:
        for handle in handles:
            handle.close()
    _delete_upload(config)
    job_progress.log(
        job_id,
        f"imported {report.imported}, duplicates {report.duplicates}, rejected {report.rejected}",
    )
    result = report.to_dict()
    result["dataset_id"] = dataset.pk
    if report.generation_ids:
        detect_job = start_detection_job(
            generation_ids=report.generation_ids, dataset=dataset, created_by=job.created_by
        )
        result["detect_job_id"] = detect_job.pk
        job_progress.log(job_id, f"face detection queued as job {detect_job.pk}")
    return result
