"""Decoding JPEGs on the model's device: nvJPEG through :func:`torchvision.io.decode_jpeg` on
CUDA, batched, then the EXIF turn, the resize and the crop (or pad) on the device too.

The decode processes still read, hash and check each file (allow-list, bomb guard, header
and metadata: :func:`organizer.imaging.device_jpeg`); only the pixels are made here. An
image the device refuses is decoded by the fallback the caller gives (Pillow, as every other
file), so it is either embedded as the CPU path would or recorded with the CPU path's error.

The geometry is :mod:`organizer.imaging`'s (the same sizes and offsets); the pixels differ
from Pillow's only by the decoders' rounding and by the resize starting from the full-size
picture rather than from Pillow's DCT-scaled draft (torch's antialiased bicubic against
Pillow's, both with a = -0.5).
"""

from __future__ import annotations

import functools
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from organizer.choices import JpegDecode
from organizer.embed import Embedder
from organizer.embed.openclip import OpenClipEmbedder
from organizer.errors import ImageError
from organizer.imaging import PreprocessSpec, _offset, _resize_dims
from organizer.pipeline import decode_for_model

# Decoded pixels one decode_jpeg call may hold (uint8, 3 a pixel): 64 Mpx is 192 MB, eighty
# 1024-px photos or five of 12 Mpx; the files' own bomb guard bounds a single picture.
BATCH_PIXELS = 64 * 2**20


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG's bytes, its EXIF orientation (1-8), and its (upright) size from the header."""

    data: bytes
    orientation: int
    width: int
    height: int


# What makes a picture stored with EXIF orientation n upright, as Pillow's exif_transpose
# does, on (channels, height, width): flips by dimension and whether to swap the axes first.
_FLIPS: dict[int, tuple[tuple[int, ...], bool]] = {
    2: ((-1,), False),  # mirrored left-right
    3: ((-1, -2), False),  # upside down
    4: ((-2,), False),  # mirrored top-bottom
    5: ((), True),  # transposed
    6: ((-1,), True),  # turned a quarter clockwise to show
    7: ((-1, -2), True),  # transversed
    8: ((-2,), True),  # turned a quarter anticlockwise to show
}


def upright(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (channels, height, width) picture turned as EXIF ``orientation`` says."""
    dims, swap = _FLIPS.get(orientation, ((), False))
    if swap:
        x = x.transpose(-1, -2)
    return x.flip(dims) if dims else x


def to_model_input(x: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """An upright uint8 (3, h, w) picture resized and cropped (or padded) to the model's input
    as :func:`organizer.imaging.to_model_input` does; uint8 (height, width, 3)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    th, tw = spec.size
    new_w, new_h = _resize_dims(w, h, spec)
    if (new_w, new_h) != (w, h):
        mode = "bilinear" if spec.interpolation == "bilinear" else "bicubic"
        y = torch.nn.functional.interpolate(
            x.unsqueeze(0).float(), (new_h, new_w), mode=mode, antialias=True, align_corners=False
        )[0]
        x = y.round_().clamp_(0, 255).to(torch.uint8)
    if (new_w, new_h) != (tw, th):
        canvas = torch.full((3, th, tw), spec.fill_color, dtype=torch.uint8, device=x.device)
        rows = _overlap(_offset(new_h, th), new_h, th)
        cols = _overlap(_offset(new_w, tw), new_w, tw)
        canvas[:, rows[0], cols[0]] = x[:, rows[1], cols[1]]
        x = canvas
    return x.permute(1, 2, 0)


def _overlap(offset: int, have: int, want: int) -> tuple[slice, slice]:
    """Where a ``have`` long side placed at ``offset`` on a ``want`` long canvas lands: the
    canvas's slice and the picture's."""
    start = max(offset, 0)
    skip = max(-offset, 0)
    length = min(have - skip, want - start)
    return slice(start, start + length), slice(skip, skip + length)


class DeviceDecoder:
    """Decodes JPEGs on an open_clip embedder's device and makes its input there."""

    def __init__(self, embedder: OpenClipEmbedder, spec: PreprocessSpec) -> None:
        self.embedder = embedder
        self.device = embedder.device
        self.spec = spec

    def pixels(
        self,
        items: Sequence[np.ndarray | EncodedJpeg],
        fallback: Callable[[bytes], np.ndarray],
    ) -> tuple[torch.Tensor, list[str | None]]:
        """The model's input for each item (pixels decoded elsewhere, or a JPEG decoded
        here), stacked on the device as uint8 (n, height, width, 3), and per item the reason
        it could not be decoded (None when it was): failed items are left out of the stack.

        A JPEG the device refuses is decoded by ``fallback`` (its bytes to pixels, raising
        :class:`~organizer.errors.ImageError` with the reason it cannot).
        """
        made: dict[int, torch.Tensor] = {}
        errors: list[str | None] = [None] * len(items)
        jpegs = [(i, item) for i, item in enumerate(items) if isinstance(item, EncodedJpeg)]
        for chunk in _chunks(jpegs):
            decoded = self._decode([jpeg for _, jpeg in chunk])
            for (i, jpeg), x in zip(chunk, decoded, strict=True):
                if x is None:
                    continue
                x = upright(x, jpeg.orientation)
                if tuple(x.shape) != (3, jpeg.height, jpeg.width):  # not what the header said
                    continue
                try:
                    made[i] = to_model_input(x, self.spec)
                except (RuntimeError, ValueError):  # out of the device's memory (a float
                    continue  # copy of a big picture): Pillow's draft decode takes it
        for i, item in enumerate(items):
            if i in made:
                continue
            try:
                array = item if isinstance(item, np.ndarray) else fallback(item.data)
            except ImageError as exc:
                errors[i] = str(exc)
                continue
            if not array.flags.writeable:  # Pillow's pixels: torch warns of read-only arrays
                array = array.copy()
            made[i] = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        th, tw = self.spec.size
        kept = [made[i] for i in range(len(items)) if i in made]
        empty = torch.zeros((0, th, tw, 3), dtype=torch.uint8, device=self.device)
        return (torch.stack(kept) if kept else empty), errors

    def embed(self, pixels: torch.Tensor) -> np.ndarray:
        """The vectors of :meth:`pixels`' stack."""
        return self.embedder.embed_pixels(pixels)

    def _decode(self, jpegs: list[EncodedJpeg]) -> list[torch.Tensor | None]:
        """Decoded (3, h, w) pictures, all at once; one by one should the batch fail (None
        for each the decoder refuses)."""
        data = [_as_tensor(j.data) for j in jpegs]
        try:
            return list(_decode_jpegs(data, self.device))
        except (RuntimeError, ValueError):
            pass
        out: list[torch.Tensor | None] = []
        for one in data:
            try:
                out.append(_decode_jpegs([one], self.device)[0])
            except (RuntimeError, ValueError):
                out.append(None)
        return out


def _decode_jpegs(data: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # a corrupt file's libjpeg warnings: the result counts
        warnings.simplefilter("ignore")
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _chunks(jpegs: list[tuple[int, EncodedJpeg]]) -> list[list[tuple[int, EncodedJpeg]]]:
    """The JPEGs in runs of at most BATCH_PIXELS decoded pixels (at least one each)."""
    chunks: list[list[tuple[int, EncodedJpeg]]] = []
    held = BATCH_PIXELS
    for pair in jpegs:
        size = pair[1].width * pair[1].height
        if held + size > BATCH_PIXELS:
            chunks.append([])
            held = 0
        chunks[-1].append(pair)
        held += size
    return chunks


def with_pillow(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """A JPEG the device did not decode, decoded here as the decode processes do (the same
    checks, the same pixels).

    Raises:
        ImageError: it cannot be decoded.
    """
    pixels = decode_for_model(data, spec)[1]
    assert pixels is not None  # a spec was given
    return pixels


def embed_items(
    embedder: Embedder,
    decoder: DeviceDecoder | None,
    items: Sequence[np.ndarray | EncodedJpeg],
    spec: PreprocessSpec,
) -> tuple[np.ndarray, list[str | None]]:
    """The vectors of ``items`` (pixels decoded elsewhere, or JPEGs left encoded), in order,
    leaving out those that cannot be decoded, and per item why (None where it was): on the
    device with ``decoder``, with Pillow here where the device has none (what an engine does
    with a batch of files its decode processes left encoded)."""

    def here(data: bytes) -> np.ndarray:
        return with_pillow(data, spec)

    if decoder is not None:
        stacked, errors = decoder.pixels(items, here)
        return (decoder.embed(stacked) if len(stacked) else np.zeros(0)), errors
    arrays: list[np.ndarray] = []
    errors = []
    for item in items:
        try:
            arrays.append(here(item.data) if isinstance(item, EncodedJpeg) else item)
            errors.append(None)
        except ImageError as exc:
            errors.append(str(exc))
    vectors = embedder.embed_pixels(np.stack(arrays)) if arrays else np.zeros(0)
    return vectors, errors


@functools.cache
def decodes_on(device: str) -> bool:
    """Whether torchvision decodes JPEGs on ``device`` in this process (tried once)."""
    try:
        _decode_jpegs([_as_tensor(_probe_jpeg())], device)
    except Exception:  # no such device, no nvJPEG in this build, a driver problem, ...
        return False
    return True


def decoder_for(embedder: object, where: str, spec: PreprocessSpec) -> DeviceDecoder | None:
    """The decoder for ``embedder``'s device when JPEGs are to be decoded there (``where``: a
    :class:`~organizer.choices.JpegDecode`): an open_clip model on CUDA (``auto``), or on any
    device (``device``), making ``spec``'s input. None otherwise, and when torchvision cannot decode on that device
    (with a warning: the files are decoded with Pillow then)."""
    if not isinstance(embedder, OpenClipEmbedder) or where == JpegDecode.WORKERS:
        return None
    if where == JpegDecode.AUTO and not str(embedder.device).startswith("cuda"):
        return None
    try:
        _decode_jpegs([_as_tensor(_probe_jpeg())], embedder.device)
    except Exception as exc:  # no nvJPEG in this torchvision build, a driver problem, ...
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        warnings.warn(
            f"JPEGs are decoded with Pillow: torchvision cannot decode them on "
            f"{embedder.device} ({reason})",
            stacklevel=2,
        )
        return None
    return DeviceDecoder(embedder, spec)


def _probe_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(out, "JPEG")
    return out.getvalue()
