"""Property-based fuzzing of the image loader: whatever the bytes, only ImageError comes out,
in bounded time and memory."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from organizer.errors import ImageError
from organizer.imaging import PreprocessSpec, decode, to_model_input
from tests.battery import BATTERY
from tests.fakes import picture

SPEC = PreprocessSpec((32, 32), (0.5,) * 3, (0.5,) * 3)


def _seeds() -> list[bytes]:
    """Valid files of every allowed format, for the fuzzer to mutate."""
    out = []
    base = picture(5, (48, 32))
    for fmt, extra in (
        ("JPEG", {}),
        ("PNG", {}),
        ("WEBP", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
    ):
        buf = io.BytesIO()
        base.save(buf, fmt, **extra)
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _load(data: bytes) -> None:
    started = time.perf_counter()
    try:
        image, _ = decode(data, min_size=(64, 64))
        to_model_input(image, SPEC)
    except ImageError:
        pass
    assert time.perf_counter() - started < 5.0


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_raise_only_image_error(data):
    _load(data)
    BATTERY.fuzzed += 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_only_image_error(data):
    _load(data)
    BATTERY.fuzzed += 1


def test_huge_declared_sizes_are_refused_before_decoding():
    """Headers that promise enormous images (GIF, BMP, TIFF) are refused from the header."""
    for fmt in ("GIF", "BMP", "TIFF", "PNG"):
        buf = io.BytesIO()
        Image.new("1" if fmt != "GIF" else "P", (30000, 20000)).save(buf, fmt)
        with BATTERY.bad_input(), pytest.raises(ImageError, match=r"decompression bomb|too large"):
            decode(buf.getvalue())
    assert np.prod((30000, 20000)) > 178_956_970
