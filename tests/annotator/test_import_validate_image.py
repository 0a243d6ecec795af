from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from annotator.imports import ImageRejected, validate_image
from tests import images


def _decoded(png_bytes: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png_bytes))
    assert image.format == "PNG"
    return image


def test_good_png_is_stored_as_rgb_png_with_its_hash_and_size() -> None:
    import hashlib

    valid = validate_image(images.encode(images.astronaut()), name="astronaut.png")

    assert (valid.width, valid.height) == (512, 512)
    assert valid.sha256 == hashlib.sha256(valid.png_bytes).hexdigest()
    stored = _decoded(valid.png_bytes)
    assert stored.mode == "RGB"
    assert np.array_equal(np.asarray(stored), images.astronaut())


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {"quality": 90}),
        ("WEBP", {"lossless": True}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
    ],
)
def test_every_accepted_format_is_read_by_content(fmt: str, params: dict) -> None:
    data = images.encode(images.noise_image(40, 30), fmt, **params)

    valid = validate_image(data, name="misnamed.txt")  # the extension is irrelevant

    assert valid.source_format == fmt
    assert (valid.width, valid.height) == (40, 30)


def test_png_named_jpg_is_detected_as_png() -> None:
    assert validate_image(images.solid_png(), name="photo.jpg").source_format == "PNG"


def test_zero_byte_file_is_refused_as_empty() -> None:
    with pytest.raises(ImageRejected, match=r"empty \(0 bytes\)"):
        validate_image(b"", name="empty.png")


def test_text_file_named_png_is_refused_as_text() -> None:
    with pytest.raises(ImageRejected, match="face.png is a text file, not an image"):
        validate_image(images.text_as_png(), name="face.png")


def test_svg_is_refused_as_vector() -> None:
    with pytest.raises(ImageRejected, match=r"SVG \(vector\) image"):
        validate_image(images.svg_image(), name="logo.svg")


def test_unknown_binary_format_is_refused() -> None:
    with pytest.raises(ImageRejected, match="not an image in an accepted format"):
        validate_image(b"\x00\x01\x02garbage" * 100, name="blob.png")


def test_truncated_jpeg_is_refused() -> None:
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        validate_image(images.truncated_jpeg(), name="cut.jpg")


def test_png_bomb_is_refused_from_its_header_and_is_small_on_disk() -> None:
    bomb = images.png_bomb()
    assert len(bomb) < 200_000

    with pytest.raises(ImageRejected, match="too many pixels|decompression bomb"):
        validate_image(bomb, name="bomb.png")


def test_image_over_our_pixel_limit_is_refused_before_decoding(settings) -> None:
    settings.FACEBENCH_MAX_IMAGE_PIXELS = 1000

    with pytest.raises(ImageRejected, match=r"40×30 = 1,200 pixels; the limit is 1,000"):
        validate_image(images.encode(images.noise_image(40, 30)), name="big.png")


def test_pillow_bomb_warning_becomes_a_rejection(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between Pillow's warning and error thresholds: with our limit out of the way, Pillow's
    # DecompressionBombWarning must still turn into a clear refusal, not a log line.
    settings.FACEBENCH_MAX_IMAGE_PIXELS = 10**12
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    with pytest.raises(ImageRejected, match="too many pixels"):
        validate_image(images.encode(images.noise_image(40, 30)), name="warn.png")


def test_byte_limit_is_checked_before_reading_everything(settings) -> None:
    settings.FACEBENCH_MAX_IMAGE_BYTES = 100

    class Stream(io.BytesIO):
        reads: list[int] = []

        def read(self, size: int | None = -1) -> bytes:
            self.reads.append(size if size is not None else -1)
            return super().read(size)

    stream = Stream(b"\x89PNG" + b"x" * 10_000)
    with pytest.raises(
        ImageRejected, match="huge.png is too large; the limit is 100 bytes per image"
    ):
        validate_image(stream, name="huge.png")
    assert stream.reads == [101]


def test_sixteen_bit_png_keeps_its_grey_levels() -> None:
    data, expected = images.sixteen_bit_png()
    assert Image.open(io.BytesIO(data)).mode.startswith("I")

    stored = np.asarray(_decoded(validate_image(data, name="deep.png").png_bytes))

    assert stored.shape == (*expected.shape, 3)
    assert np.array_equal(stored[:, :, 0], expected)
    assert np.array_equal(stored[:, :, 0], stored[:, :, 2])


def test_cmyk_jpeg_becomes_the_right_rgb() -> None:
    stored = _decoded(validate_image(images.cmyk_jpeg(), name="print.jpg").png_bytes)

    red, green, blue = stored.getpixel((20, 15))
    assert red > 240 and green < 15 and blue < 15


@pytest.mark.parametrize("mode", ["P", "LA", "L", "1", "RGBA"])
def test_other_modes_become_8_bit_rgb(mode: str) -> None:
    source = Image.fromarray(images.noise_image(20, 10)).convert(mode)

    stored = _decoded(validate_image(images.encode(source), name=f"{mode}.png").png_bytes)

    assert stored.mode == "RGB" and stored.size == (20, 10)


def test_transparent_pixels_are_flattened_onto_white() -> None:
    source = Image.new("RGBA", (4, 4), (255, 0, 0, 0))

    stored = _decoded(validate_image(images.encode(source), name="clear.png").png_bytes)

    assert stored.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_is_refused() -> None:
    with pytest.raises(ImageRejected, match=r"animated or multi-page GIF \(3 frames\)"):
        validate_image(images.animated_gif(), name="loop.gif")


def test_exif_rotation_is_applied() -> None:
    valid = validate_image(images.exif_rotated_jpeg(), name="phone.jpg")

    assert (valid.width, valid.height) == (30, 60)
    stored = np.asarray(_decoded(valid.png_bytes)).astype(int)
    top, bottom = stored[5, 15], stored[55, 15]
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60  # blue below


def test_same_pixels_give_the_same_hash_whatever_the_container() -> None:
    array = images.noise_image(16, 16)
    as_png = validate_image(images.encode(array, "PNG"), name="a.png")
    as_bmp = validate_image(images.encode(array, "BMP"), name="a.bmp")

    assert as_png.sha256 == as_bmp.sha256
