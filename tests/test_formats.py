"""The formats organizer takes besides the common ones: JPEG 2000, Netpbm, camera RAW (with
the organizer[raw] extra), multi-page TIFF, and a clear word for HEIC without its extra and
for a TIFF layout Pillow cannot decode."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from organizer.errors import ImageError
from organizer.imaging import BASE_FORMATS, PreprocessSpec, decode
from organizer.pipeline import Job, prepare
from tests.fakes import picture


def make_dng(extra: tuple = ()) -> bytes:
    """A small valid DNG: a Bayer (RGGB) mosaic with the tags LibRaw needs (and ``extra``
    tifffile tags, such as a camera's make and date)."""
    tifffile = pytest.importorskip("tifffile")
    h, w = 64, 96
    cfa = np.zeros((h, w), np.uint16)
    cfa[0::2, 0::2], cfa[1::2, 1::2] = 3000, 500  # red and blue sites
    cfa[0::2, 1::2] = cfa[1::2, 0::2] = 1500  # green sites
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50708, "s", 0, "organizer test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50714, "H", 1, (0,), True),  # BlackLevel
        (50717, "H", 1, (4095,), True),  # WhiteLevel
        (50721, "2i", 9, [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1], True),
        (50728, "2I", 3, [1, 1, 1, 1, 1, 1], True),  # AsShotNeutral
        *extra,
    ]
    buf = io.BytesIO()
    tifffile.imwrite(buf, cfa, photometric=32803, extratags=tags, metadata=None)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, ext", [("JPEG2000", ".jp2"), ("PPM", ".ppm")])
def test_jpeg2000_and_netpbm_decode(fmt, ext):
    buf = io.BytesIO()
    picture(1).save(buf, format=fmt)
    image, info = decode(buf.getvalue())
    assert image.mode == "RGB" and image.size == (96, 64) and info.format == fmt


def multipage_tiff(*pages) -> bytes:
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=list(pages[1:]))
    return buf.getvalue()


def float64_tiff() -> bytes:
    """Like scikit-image's multipage_rgb.tif: two pages of 3 planes of 64-bit floats."""
    tifffile = pytest.importorskip("tifffile")  # Pillow writes no 64-bit samples
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.linspace(0, 1, 600).reshape(2, 3, 10, 10), photometric="rgb")
    return buf.getvalue()


def test_a_multipage_tiff_is_its_first_page(tmp_path):
    """As for GIF: the first page, whatever the others are (ingest's path: a file)."""
    first = Image.new("RGB", (40, 30), (255, 0, 0))
    path = tmp_path / "pages.tif"
    path.write_bytes(multipage_tiff(first, Image.new("I;16", (60, 20), 9), first.convert("L")))
    spec = PreprocessSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    prepared = prepare(Job(0, os.fsencode(path), -1, -1), spec)
    assert prepared.error is None and prepared.info.format == "TIFF"
    assert (prepared.info.width, prepared.info.height) == (40, 30)
    assert (prepared.pixels[..., 0] > 250).all() and (prepared.pixels[..., 2] < 5).all()


def test_a_tiff_pillow_cannot_decode_says_why():
    """Listing TIFF among the allowed formats while refusing a TIFF told the user nothing."""
    with pytest.raises(ImageError) as refused:
        decode(float64_tiff())
    reason = str(refused.value)
    assert "3-sample 64-bit floating-point" in reason and "allowed" not in reason
    with pytest.raises(ImageError, match="damaged TIFF"):
        decode(b"II*\x00\xff\xff\x00\x00 not a directory")


def test_raw_decodes_with_the_extra():
    pytest.importorskip("rawpy")
    image, info = decode(make_dng(), raw=True)
    assert image.mode == "RGB" and image.size == (96, 64)
    assert (info.width, info.height, info.format) == (96, 64, "RAW")


def test_raw_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "rawpy", None)  # as if not installed
    with pytest.raises(ImageError, match=r"pip install 'organizer\[raw\]'"):
        decode(b"any bytes", raw=True)


def test_a_damaged_raw_is_an_image_error():
    pytest.importorskip("rawpy")
    with pytest.raises(ImageError, match="cannot decode camera RAW"):
        decode(make_dng()[:300], raw=True)


def test_heic_without_the_extra_names_it():
    """As without pillow-heif (the suite installs it): HEIF is not among the formats."""
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(ImageError, match=r"pip install 'organizer\[heic\]'"):
        decode(heic, formats=BASE_FORMATS)


def test_the_cli_ingests_every_format(cli, tmp_path):
    pytest.importorskip("rawpy")
    root = tmp_path / "photos"
    root.mkdir()
    picture(1).save(root / "a.jp2")
    picture(2).save(root / "b.ppm")
    picture(3).convert("L").save(root / "c.pgm")
    (root / "d.dng").write_bytes(make_dng())
    result = cli("ingest", root, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["new"], summary["failed"]) == (4, 0), summary


@pytest.mark.parametrize("flip, size", [(0, (96, 64)), (3, (96, 64)), (5, (64, 96)), (6, (64, 96))])
def test_a_raw_preview_is_turned_upright(flip, size):
    """LibRaw hands previews over as the sensor saw them; the RAW's orientation turns them."""
    from types import SimpleNamespace

    from organizer.imaging import _raw_preview

    preview = np.zeros((64, 96, 3), np.uint8)
    preview[0, 0] = 255  # a marker in the sensor's top-left corner
    fake_rawpy = SimpleNamespace(
        LibRawError=RuntimeError, ThumbFormat=SimpleNamespace(JPEG="jpeg", BITMAP="bitmap")
    )
    fake_raw = SimpleNamespace(extract_thumb=lambda: SimpleNamespace(format="bitmap", data=preview))
    image, _ = _raw_preview(fake_raw, fake_rawpy, None, flip)
    assert image.size == size
    corner = {0: (0, 0), 3: (95, 63), 5: (0, 95), 6: (63, 0)}[flip]
    assert image.getpixel(corner)[0] == 255


def test_a_disk_image_named_raw_is_not_taken_for_a_photo():
    from organizer.scan import is_image_name

    assert not is_image_name(b"vm-disk.raw") and is_image_name(b"IMG_0001.CR2")
