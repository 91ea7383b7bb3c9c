"""What an uploaded picture may cost the server.

A 37 KB PNG can hold 169 million pixels of one colour: decoded in full on each of the
server's 40 worker threads, a few of them took gigabytes. So an upload

- is read up to MAX_UPLOAD bytes, however it is sent, and at no less than MIN_RATE once
  GRACE_S has passed (a client that trickles its body would hold a place in the line);
- is decoded only as large as the query needs (a JPEG at a reduced scale, anything else
  shrunk as soon as it is decoded), and refused before decoding when even that would hold
  more than DECODE_BUDGET bytes: any baseline JPEG passes (up to the bomb guard's 179 MP),
  a progressive one up to about 128 MP (4:2:0; 64 MP at 4:4:4: libjpeg holds its
  coefficients whole), a 48 MP HEIC, a 64 MP PNG or TIFF (less when written as one strip),
  a 50 MP PNG with transparency, a 20 MP WebP;
- waits for one of DECODING turns; WAITING more may wait, and past that the server answers
  503 at once, before reading the body;
- and once decoded, the memory it freed goes back to the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import AsyncIterator, Callable

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from organizer.errors import ImageError, ImageTooLargeError, QueryError
from organizer.imaging import PreprocessSpec, decode, to_model_input

MAX_UPLOAD = 64 * 1024 * 1024
DECODE_BUDGET = 384 * 2**20
DECODING = 2
WAITING = 6
BUSY = "the server is busy with other pictures: try again in a moment"
GRACE_S = 15.0  # seconds any upload may take
MIN_RATE = 256 * 1024  # bytes a second an upload must keep up past its grace


class Gate:
    """Turns for uploads: ``decoding`` at once, ``waiting`` more queued, the rest refused."""

    def __init__(self, decoding: int = DECODING, waiting: int = WAITING):
        self._turns = asyncio.Semaphore(decoding)
        self._limit = decoding + waiting
        self._inside = 0  # one event loop: no lock needed

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold a place in the line for the whole request, or answer 503 now."""
        if self._inside >= self._limit:
            raise HTTPException(503, BUSY, headers={"Retry-After": "2"})
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1

    def turn(self) -> asyncio.Semaphore:
        """``async with gate.turn():`` around the decoding."""
        return self._turns


async def read_body(request: Request) -> bytes:
    """The request's body, refused (413) past MAX_UPLOAD however it is sent (a chunked body
    has no Content-Length to check first)."""
    too_large = HTTPException(413, f"an image of at most {MAX_UPLOAD // 2**20} MB, please")
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise HTTPException(400, "Content-Length is not a number") from None
    if declared > MAX_UPLOAD:
        raise too_large
    body = bytearray()
    allowed = GRACE_S + (declared or MAX_UPLOAD) / MIN_RATE
    try:
        async with asyncio.timeout(allowed):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_UPLOAD:
                    raise too_large
    except ClientDisconnect:  # a cancelled upload: nobody to answer, nothing to report
        raise HTTPException(400, "the upload was cut off") from None
    except TimeoutError:
        raise HTTPException(
            408, f"the upload was too slow: {len(body):,} bytes came in {allowed:.0f} s"
        ) from None
    return bytes(body)


def query_pixels(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """An uploaded picture as the model's input, decoded within DECODE_BUDGET. The bytes
    alone decide the decoder (no camera-RAW decoder for a name ending in .nef).

    Raises:
        QueryError: not a picture organizer reads, or too large to decode.
    """
    refusal = None
    try:
        pixels = _model_input(data, spec)
    except ImageTooLargeError as exc:
        refusal = f"the uploaded picture is too large to search by: {exc}"
    except ImageError as exc:
        refusal = f"the uploaded file is not a picture organizer reads ({exc})"
    except MemoryError:
        refusal = "not enough memory to decode the uploaded picture"
    # Only now is the full-size picture freed: with _model_input's frame, and with the
    # error's traceback, which holds that frame until its except block ends.
    give_back_memory()
    if refusal is not None:
        raise QueryError(refusal)
    return pixels


def _model_input(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    image, _ = decode(data, min_size=spec.decode_size, max_bytes=DECODE_BUDGET)
    return to_model_input(image, spec)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


_TRIM = _malloc_trim()


def give_back_memory() -> None:
    """Hand freed heap memory back to the system. glibc keeps what worker threads free in
    their arenas (Pillow's 16 MB blocks fall under its raised mmap threshold; Pillow caches
    none): three decodes at once of a 169 MP PNG on threads left 217 MB resident after they
    were freed, 32 MB after malloc_trim."""
    if _TRIM is not None:
        _TRIM(0)
