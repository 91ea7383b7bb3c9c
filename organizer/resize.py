"""Resizing 8-bit RGB pictures with an antialiased filter, as Pillow does it, several times
faster: torch's uint8 kernels (``interpolate(..., antialias=True)``) were written to match
Pillow's filters and run them with SIMD.

On 1024-px photos torch takes ~0.8 ms where Pillow takes ~6 ms (one core), and the pixels
differ by 0.002 grey levels on average, 2 at most (bench/decode.py). Where Pillow 13 runs its
vertical pass first (a tall picture whose width barely shrinks: python-pillow/Pillow#9549)
the rounding between the passes differs, by up to ~20 levels at hard edges; vectors still
agree (24 tall 300-px-wide crops of the shared photos: max 11 levels, cosine min 0.999993). torch is imported on first use, by the first picture of MIN_PIXELS or more (smaller ones are
cheap for Pillow: a decode worker that meets only those never pays torch's import, ~1-2.5 s
of CPU and ~260 MB); :func:`use_one_thread` keeps it to one thread in a decode worker.
Where torch cannot be imported, :func:`resize_rgb` returns None and the caller uses Pillow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from types import ModuleType

import numpy as np
from PIL import Image

# The filters torch computes exactly as Pillow does (its antialiased bicubic uses Pillow's
# a = -0.5, not the -0.75 of its own plain bicubic).
MODES = ("bicubic", "bilinear")
# Pictures smaller than this are resized by Pillow (well under a millisecond there); which
# path a picture takes depends on it alone, so every engine makes the same pixels.
MIN_PIXELS = 250_000


_ONE_THREAD = [False]  # set in a decode worker: torch gets one thread once imported


@functools.cache
def _torch() -> ModuleType | None:
    try:
        import torch
    except Exception:  # not installed, or a broken install: Pillow resizes instead
        return None
    if _ONE_THREAD[0]:
        torch.set_num_threads(1)
    return torch


def use_one_thread(now: bool = True) -> None:
    """For a decode worker, one of several on as many cores: keep torch's kernels on this
    worker's one thread, importing it ``now`` (while the worker starts, not on its first file)
    or when first needed (a worker that leaves most files to the GPU: torch costs a worker
    ~260 MB of its own memory). And keep freed memory for the next file (see _keep_heap)."""
    _keep_heap()
    _ONE_THREAD[0] = True
    if now or "torch" in sys.modules:  # imported already: by a task before (Ray reuses
        torch = _torch()  # its worker processes), which may have set other threads
        if torch is not None:
            torch.set_num_threads(1)


# glibc's mallopt() parameters, and what a decode worker gives them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_MMAP_BYTES, _HEAP_TRIM_BYTES = 64 * 2**20, 256 * 2**20


def _keep_heap() -> None:
    """Have glibc keep the megabytes each file's decode frees for the next file, instead of
    handing them back to the kernel and faulting fresh pages in again: torch's buffers (a
    picture's copy, the resize's passes) are large enough for glibc to map and unmap them
    each time, which cost 4.5 ms of system time a 1024-px photo, more than the resize saves
    (1,700 page faults a file; 14 with this). At most 256 MB stay held. Not glibc: nothing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_MMAP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_TRIM_BYTES)
    except (OSError, AttributeError):  # another C library (musl, macOS): its own ways
        pass


def resize_rgb(image: Image.Image, size: tuple[int, int], mode: str) -> np.ndarray | None:
    """An RGB image reduced to ``size`` (width, height) with an antialiased ``mode`` filter
    (one of :data:`MODES`).

    Returns:
        uint8 array of shape (height, width, 3) (strided, not contiguous), or None where
        torch is not importable, or the image, filter or enlargement is not one it computes
        as Pillow does (the caller resizes with Pillow).
    """
    width, height = size
    if image.width * image.height < MIN_PIXELS:
        return None
    if width > image.width or height > image.height:
        # Enlarging: torch's integer weights then round differently from Pillow's (by up to
        # 6 grey levels where one side grows as the other shrinks); small pictures are cheap.
        return None
    torch = _torch()
    if torch is None or image.mode != "RGB" or mode not in MODES:
        return None
    # A writable copy: torch refuses to wrap the read-only buffer np.asarray(image) gives.
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    # NCHW over channels-last memory: the layout torch's SIMD uint8 kernels take as is.
    batch = pixels.permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        resized = torch.nn.functional.interpolate(
            batch, size=(height, width), mode=mode, antialias=True
        )
    # A view in (height, width, 3) order, not a copy: the caller crops before it copies.
    return resized[0].permute(1, 2, 0).numpy()
