"""Decoding: modes, orientation, bombs, allow-list, and parity with open_clip's transform."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from organizer.errors import ImageError, ImageTooLargeError
from organizer.imaging import PreprocessSpec, decode, decode_cost, to_model_input
from tests.fakes import image_bytes, picture


def _rgb(data: bytes) -> np.ndarray:
    image, _ = decode(data)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_cmyk_jpeg_is_converted():
    data = image_bytes(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=95)
    px = _rgb(data)
    assert px.shape == (10, 20, 3) and px[5, 5, 0] > 200 and px[5, 5, 1] < 60


def test_16bit_png_is_scaled_not_clipped():
    array = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    data = image_bytes(Image.fromarray(array), "PNG")
    px = _rgb(data)
    assert 120 <= px[0, 0, 0] <= 135


def test_palette_with_transparency_goes_over_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    px = _rgb(image_bytes(image, "PNG", transparency=0))
    assert (px == 255).all()


@pytest.mark.parametrize(
    "mode, value, expected",
    [("LA", (0, 0), 255), ("LA", (10, 255), 10), ("1", 1, 255), ("L", 77, 77)],
)
def test_grey_modes(mode, value, expected):
    px = _rgb(image_bytes(Image.new(mode, (4, 4), value), "PNG"))
    assert (px == expected).all()


def test_decompression_bomb_is_refused_without_decoding():
    data = image_bytes(Image.new("1", (20000, 20000), 0), "PNG")
    assert len(data) < 200_000
    with pytest.raises(ImageError, match="decompression bomb"):
        decode(data)


@pytest.mark.parametrize("fmt", ["EPS", "PSD", "SVG", "ICO", "PCX"])
def test_formats_off_the_allow_list_are_refused(fmt):
    samples = {
        "EPS": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "PSD": b"8BPS\x00\x01" + b"\x00" * 40,
        "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        "ICO": image_bytes(Image.new("RGB", (16, 16)), "ICO"),
        "PCX": image_bytes(Image.new("RGB", (16, 16)), "PCX"),
    }
    with pytest.raises(ImageError, match="not a supported image"):
        decode(samples[fmt])


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    px = _rgb(buf.getvalue())
    assert px[0, 0, 0] > 200 and px[0, 0, 1] < 50


def test_exif_capture_time_is_read():
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = "2019:07:14 15:30:00"
    _, info = decode(image_bytes(picture(1), "JPEG", exif=exif))
    assert (
        info.meta.taken_at is not None and info.meta.taken_at.isoformat() == "2019-07-14T15:30:00"
    )


def test_truncated_jpeg_fails_cleanly():
    data = image_bytes(picture(2, (400, 300)), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        decode(data[: len(data) // 2])


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (64, 64), (31, 90)])
@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_model_input_matches_open_clip_transform(size, mode):
    """Same geometry, pixels within a few grey levels: torch's resize rounds a few the other
    way from Pillow's, and always runs its horizontal pass first, as Pillow did before 13 (13
    sometimes runs the vertical one first: up to 6 levels here, at hard edges; a pixel's shift
    would differ by far more). tests/test_resize.py has Pillow's own, exact, without torch."""
    from open_clip.transform import image_transform

    spec = PreprocessSpec((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize_mode=mode)
    image = picture(5, size)
    ours = to_model_input(image, spec).astype(np.float32) / 255.0
    ours = (ours - 0.5) / 0.25
    theirs = image_transform(32, is_train=False, mean=spec.mean, std=spec.std, resize_mode=mode)(
        image
    )
    difference = np.abs(ours - theirs.permute(1, 2, 0).numpy())
    levels = difference * 255 * 0.25
    assert levels.max() < 8 and levels.mean() < 0.25


# -- a budgeted decode (an uploaded query) ----------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGBA pixels but holds a single one: what a
    decoder would allocate is in its header alone."""
    data = bytearray(image_bytes(Image.new("RGBA", (1, 1)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_a_budget_refuses_before_decoding():
    """81 MP of RGBA would hold ~620 MB: refused from the header, before a byte of pixels is
    decoded (this file has none), and before EXIF is read (a PNG's getexif() decodes it)."""
    with pytest.raises(ImageTooLargeError, match=r"9000 x 9000 pixels would take about 618 MB"):
        decode(png_claiming(9000, 9000), min_size=(64, 64), max_bytes=384 * 2**20)


def test_a_jpeg_counts_at_its_draft_scale():
    data = image_bytes(picture(3, (2000, 1600)), "JPEG")
    image, info = decode(data, min_size=(64, 64), max_bytes=2**20)  # 12.8 MB in full
    assert (info.width, info.height) == (2000, 1600) and max(image.size) <= 250
    with pytest.raises(ImageTooLargeError):
        decode(image_bytes(picture(3, (2000, 1600)), "PNG"), min_size=(64, 64), max_bytes=2**20)


@pytest.mark.parametrize(
    ("options", "held"),
    [
        ({"progressive": True, "subsampling": 0}, 3 * 2),  # 4:4:4, 2 bytes a coefficient
        ({"progressive": True, "subsampling": 2}, 1.5 * 2),  # 4:2:0
        ({}, 0),  # a baseline JPEG is decoded at its draft scale, a strip at a time
    ],
)
def test_a_progressive_jpeg_counts_every_coefficient_of_the_whole_picture(options, held):
    """libjpeg holds all of a progressive picture's coefficients until its last scan,
    whatever the draft scale (a 12000 x 12000 one took 835 MB at 4:4:4)."""
    data = image_bytes(Image.new("RGB", (2000, 1500), (120, 30, 200)), "JPEG", **options)
    image = Image.open(io.BytesIO(data))
    image.draft(None, (64, 64))
    assert decode_cost(image, (2000, 1500)) == image.width * image.height * 4 + int(
        2000 * 1500 * held
    )
    budget = 2000 * 1500 * 2  # 6 MB: more than the draft-scale picture, less than the rest
    if held:
        with pytest.raises(ImageTooLargeError, match="2000 x 1500 pixels would take about"):
            decode(data, min_size=(64, 64), max_bytes=budget)
    else:
        decode(data, min_size=(64, 64), max_bytes=budget)


@pytest.mark.parametrize("rows", [800, 64])
def test_a_tiff_counts_the_strip_its_decoder_holds(rows):
    """Written as one strip (800 rows), the whole picture is held once more while Pillow
    copies it out; in strips of 64 rows, only those."""
    image = Image.new("RGB", (1000, 800), (9, 9, 9))
    data = image_bytes(image, "TIFF", compression="tiff_lzw", tiffinfo={278: rows})
    assert decode_cost(Image.open(io.BytesIO(data))) == 1000 * 800 * 4 + 1000 * rows * 3


def _in_mode(mode: str) -> bytes:
    source = picture(7, (1200, 900))
    if mode == "I;16":
        grey = np.asarray(source.convert("L")).astype(np.uint16) * 257
        return image_bytes(Image.fromarray(grey), "PNG")
    if mode in ("RGBA", "LA"):
        shaped = source.convert(mode[0] if mode == "LA" else "RGB")
        shaped.putalpha(Image.linear_gradient("L").resize(source.size))
        return image_bytes(shaped, "PNG")
    if mode == "P":
        return image_bytes(source.quantize(64), "PNG", transparency=0)
    return image_bytes(source.convert(mode), "TIFF" if mode == "CMYK" else "PNG")


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16", "CMYK"])
def test_a_budgeted_decode_shrinks_first_and_looks_the_same(mode):
    """Shrunk as soon as it is decoded, in its own mode (or one that averages): the model's
    input differs from a full decode's by about a grey level, not by what a mode means
    (16-bit scaling, transparency over white)."""
    spec = PreprocessSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    data = _in_mode(mode)
    full, _ = decode(data)
    small, info = decode(data, min_size=spec.decode_size, max_bytes=2**30)
    assert (info.width, info.height) == (1200, 900) and small.size == (85, 64)
    assert small.mode == "RGB"
    difference = np.abs(
        to_model_input(full, spec).astype(np.int16) - to_model_input(small, spec).astype(np.int16)
    )
    assert difference.mean() < 2 and difference.max() < 16


def test_a_shrunk_transparent_palette_still_goes_over_white():
    image = Image.new("P", (1000, 1000), 0)
    image.putpalette([0, 0, 0] * 256)
    data = image_bytes(image, "PNG", transparency=0)
    small, _ = decode(data, min_size=(64, 64), max_bytes=2**30)
    assert small.size == (66, 66) and (np.asarray(small) == 255).all()
