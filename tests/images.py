"""Test images: real face photos that ship inside installed wheels, and the bad-input corpus.

Everything is generated in memory (or under a test's tmp_path); nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Face regions picked by looking at the photos: the eyes-to-mouth area of the one face in each.
# A detected box must contain this region (and must not be much bigger than the head).
ASTRONAUT_FACE_CORE = (195, 90, 255, 150)
GRACE_HOPPER_FACE_CORE = (185, 175, 345, 295)


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def camera() -> np.ndarray:
    """The cameraman, greyscale 512×512, repeated to RGB."""
    from skimage import data

    return np.ascontiguousarray(np.repeat(data.camera()[:, :, None], 3, axis=2))


def grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


def flat_image(width: int = 320, height: int = 240, value: int = 128) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def noise_image(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(array_or_image: np.ndarray | Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    image = (
        array_or_image
        if isinstance(array_or_image, Image.Image)
        else Image.fromarray(array_or_image)
    )
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid_png(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 24)
) -> bytes:
    return encode(Image.new("RGB", size, color))


def distinct_pngs(count: int, size: tuple[int, int] = (32, 24)) -> list[bytes]:
    """``count`` small PNGs with different content (so different sha256)."""
    return [
        solid_png((10 + 7 * i % 240, 40 + 13 * i % 200, 90 + 3 * i % 160), size)
        for i in range(count)
    ]


# --- the bad-input corpus -------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    data = encode(noise_image(200, 150), "JPEG", quality=90)
    return data[: len(data) // 2]


def text_as_png() -> bytes:
    return b"This is a plain text file that someone named face.png.\n"


def svg_image() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
        b'<circle cx="32" cy="32" r="30" fill="tan"/></svg>\n'
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of width×height zero pixels: tiny on disk, huge decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale ('I;16') PNG and the 8-bit grey levels it must come out as."""
    levels16 = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)  # 0, 257, …, 65535
    array16 = np.tile(levels16, (8, 1))
    expected8 = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    return encode(Image.fromarray(array16)), expected8


def cmyk_jpeg() -> bytes:
    """Pure red in CMYK (C=0, M=Y=100%, K=0)."""
    return encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)


def animated_gif() -> bytes:
    frames = [
        Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Stored 60×30 (left half red, right half blue) with EXIF orientation 6 ('rotate 90° CW').

    Displayed correctly it is 30 wide × 60 tall, red on top, blue below.
    """
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    image.paste((0, 0, 255), (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def non_utf8_manifest() -> bytes:
    return (
        b'{"file": "a.png", "prompt": "a portrait", "model": "sd15"}\n'
        b'{"file": "b.png", "prompt": "caf\xe9 portrait", "model": "sd15"}\n'
    )


def jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def make_zip(files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so the mode bits in external_attr count
            info.external_attr = 0o120777 << 16  # S_IFLNK | 0777
            archive.writestr(info, target)
    return buffer.getvalue()
