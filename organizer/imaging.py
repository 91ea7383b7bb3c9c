"""Safe image decoding: allow-listed formats, bomb guard, draft decoding, EXIF orientation,
mode normalisation, and resizing to a model's input.

Pillow and numpy decode; the resize to the model's input runs torch's antialiased uint8
kernels where torch is importable (:mod:`organizer.resize`, imported on first use, as decode
workers do while they start), else Pillow's. Every failure comes out as
:class:`~organizer.errors.ImageError` with a short reason.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from organizer.errors import ImageError, ImageTooLargeError
from organizer.photo_meta import PhotoMeta, meta_from_exif, read_meta
from organizer.resize import resize_rgb

# JPEG2000 (OpenJPEG) and PPM (Pillow's name for all of Netpbm) ship in Pillow's wheels.
BASE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "JPEG2000", "PPM")
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")
# Pillow's own "this is a decompression bomb" threshold (2x its warning limit).
MAX_PIXELS = 2 * 89_478_485

# Odd but readable files make Pillow chatty ("Tag data larger than file", its bomb warning
# below MAX_PIXELS); organizer reports what matters itself. Set once, at import: a
# catch_warnings() per call is not thread-safe, and thumbnails are decoded in threads.
warnings.filterwarnings("ignore", module="PIL")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def allowed_formats() -> tuple[str, ...]:
    """Formats organizer decodes; HEIF only when pillow-heif is installed."""
    try:
        import pillow_heif
    except ImportError:
        return BASE_FORMATS
    pillow_heif.register_heif_opener()
    return (*BASE_FORMATS, "HEIF")


@dataclass(frozen=True)
class ImageInfo:
    """What organizer records about a decoded file."""

    width: int
    height: int
    format: str
    meta: PhotoMeta


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model wants its input: size (height, width), resize mode, normalisation."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @property
    def decode_size(self) -> tuple[int, int]:
        """The least (width, height) a decode may shrink a picture to: twice the input, so the
        final bicubic resize still anti-aliases (cosine to a full decode >= 0.9999 on real
        photos, while a 12-MP JPEG decodes ~4x faster at its draft scale)."""
        return 2 * self.size[1], 2 * self.size[0]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        """From its recorded JSON form (``asdict``; lists back to tuples)."""
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        return cls(**fields)

    @classmethod
    def from_open_clip(cls, cfg: dict) -> PreprocessSpec:
        size = cfg["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(
            size=size,
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
            fill_color=cfg.get("fill_color", 0),
        )


def open_image(data: bytes, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Open image bytes lazily, accepting only allow-listed formats and sane pixel counts.

    Raises:
        ImageError: not an image, a format not on the allow-list, or a decompression bomb.
    """
    if not data:
        raise ImageError("empty file")
    formats = formats or allowed_formats()
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS and "HEIF" not in formats:
            raise ImageError(
                "HEIC/HEIF image: install its support with pip install 'organizer[heic]'"
            ) from None
        if data[:4] in _TIFF_MAGIC and "TIFF" in formats:
            raise ImageError(_tiff_refusal(data)) from None
        raise ImageError(f"not a supported image (allowed: {', '.join(formats)})") from None
    except Image.DecompressionBombError:
        raise ImageError("image too large: looks like a decompression bomb") from None
    except Exception as exc:
        raise ImageError(f"cannot read image header: {_reason(exc)}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"invalid image size {width}x{height}")
    if width * height > MAX_PIXELS:
        raise ImageError(f"image too large ({width}x{height}): looks like a decompression bomb")
    return image


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_SAMPLE_KINDS = {1: "integer", 2: "signed integer", 3: "floating-point"}


def _tiff_refusal(data: bytes) -> str:
    """Why Pillow refused a TIFF, from its first page's tags: Pillow decodes 1-, 8- and 16-bit
    integer samples and 32-bit float greys, not every layout TIFF allows (64-bit floats)."""
    from PIL import TiffImagePlugin

    try:
        tags = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
        stream = io.BytesIO(data)
        stream.seek(tags.next)
        tags.load(stream)
        if 256 not in tags:  # no width: not a directory after all
            raise ValueError
        bits = tags.get(258, (1,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        kind = tags.get(339, (1,))
        kind = kind[0] if isinstance(kind, tuple) else kind
        samples = tags.get(277, len(bits))
    except Exception:
        return "a damaged TIFF: its first page cannot be read"
    return (
        f"a TIFF of {samples}-sample {bits[0]}-bit {_SAMPLE_KINDS.get(kind, 'unknown-kind')} "
        "pixels, which Pillow cannot decode: save it with 8- or 16-bit integer samples"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha over white, 16-bit scaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(array.max()), 1.0)
        if mode != "F" and not mode.startswith("I;16") and top <= 255:
            top = 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def decode(
    data: bytes,
    min_size: tuple[int, int] | None = None,
    formats: tuple[str, ...] | None = None,
    raw: bool = False,
    max_bytes: int | None = None,
) -> tuple[Image.Image, ImageInfo]:
    """Decode the first frame of image bytes to an upright RGB image.

    Args:
        data: the file's bytes.
        min_size: when given, JPEGs are decoded at the smallest DCT scale that keeps both
            sides at least this large (``Image.draft``), which is several times faster.
        formats: allow-list override (tests).
        raw: the bytes are a camera RAW file (by its name): decoded with rawpy.
        max_bytes: a memory budget, for a decode that needs no more than ``min_size`` (a
            query): the picture is shrunk to about ``min_size`` as soon as it is decoded,
            before any conversion, and refused before decoding if even that would hold
            more than this many bytes (see :func:`decode_cost`).

    Returns:
        The RGB image (EXIF orientation applied) and the info to record; width and height
        are the file's full, upright dimensions.

    Raises:
        ImageTooLargeError: decoding would cost more than ``max_bytes``.
        ImageError: whatever the reason the bytes cannot be decoded.
    """
    if raw:
        return decode_raw(data, min_size)
    image = open_image(data, formats)
    try:
        image.seek(0)
        width, height = image.size
        fmt = image.format or "?"
        if min_size is not None and fmt in ("JPEG", "MPO"):  # MPO: a JPEG with more frames
            image.draft(None, min_size)
        # Before any EXIF is read: a PNG's getexif() decodes the whole picture.
        if max_bytes is not None and decode_cost(image, (width, height)) > max_bytes:
            raise ImageTooLargeError(
                f"{width} x {height} pixels would take about "
                f"{decode_cost(image, (width, height)) / 2**20:,.0f} MB to decode, more than the "
                f"{max_bytes / 2**20:,.0f} MB allowed: a smaller copy will do"
            )
        meta = read_meta(image)
        orientation = meta.orientation or 1
        image.load()
        if max_bytes is not None and min_size is not None:
            image = _shrink(image, min_size)
        image = ImageOps.exif_transpose(image) or image
        image = to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot decode image: {_reason(exc)}") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return image, ImageInfo(width, height, fmt, meta)


def device_jpeg(data: bytes) -> ImageInfo | None:
    """The info of a JPEG that a GPU decoder can be trusted with, from its header alone (the
    same allow-list and bomb guard as :func:`decode`); None for anything else, which
    :func:`decode` handles: other formats, CMYK and YCCK (rare, and which colours nvJPEG
    gives for Adobe's inverted CMYK is untested: a wrong guess would not raise), MPO, a
    header Pillow cannot read fully, or a file that does not end with the end-of-image
    marker (truncated, or with bytes after the picture).

    Raises:
        ImageError: as :func:`open_image`.
    """
    image = open_image(data)
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    if not data.rstrip(b"\0\r\n \t").endswith(b"\xff\xd9"):
        # No end-of-image marker: cut short (or with bytes after it). A GPU decoder may
        # fill what is missing without a word; Pillow refuses a truncated file.
        return None
    try:
        meta = read_meta(image)
    except Exception:
        return None
    width, height = image.size
    if meta.orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(width, height, "JPEG", meta)


# Bytes a pixel costs while a budgeted decode holds it (Pillow 13, peak RSS measured at the
# budget, within 5 % of this for each mode and format): how Pillow stores the mode (RGB
# takes 4), plus the full-size copy that shrinking makes of a mode it cannot average as it
# is ("1" to L, P to RGB(A)) or of one with alpha (Pillow premultiplies it), plus what the
# format's own decoder holds beside it: libwebp's canvas and the frame it hands over,
# OpenJPEG's 32-bit planes, pillow-heif's decoded planes (not measured: not installed here).
_STORED = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_COPIED = {"1": 1, "P": 4, "PA": 4, "LA": 4, "La": 4, "RGBA": 4, "RGBa": 4}
_DECODER = {"WEBP": 12, "JPEG2000": 16, "HEIF": 4}


def decode_cost(image: Image.Image, full_size: tuple[int, int] | None = None) -> int:
    """About the most memory, in bytes, that decoding an opened (not yet loaded) image with a
    budget takes: JPEGs count at their draft scale, so ask after :meth:`Image.draft` and give
    the size the file has (``full_size``), which what the decoder holds may follow."""
    per_pixel = _STORED.get(image.mode, 4) + _COPIED.get(image.mode, 0)
    per_pixel += _DECODER.get(image.format or "", 0)
    full_width, full_height = full_size or image.size
    held = 0
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        held = _coefficient_bytes(image, full_width, full_height)
    elif image.format == "TIFF":
        held = _strip_bytes(image, full_width, full_height)
    return image.width * image.height * per_pixel + held


def _coefficient_bytes(image: Image.Image, width: int, height: int) -> int:
    """What libjpeg holds for a progressive JPEG, whatever the draft scale: every DCT
    coefficient of the whole picture (2 bytes each) until its last scan is read. Each
    component counts at its own sampling (4:2:0 holds 1.5 samples a pixel, 4:4:4 three)."""
    layers = getattr(image, "layer", None) or [("?", 1, 1, 0)] * len(image.getbands())
    most_h = max(layer[1] for layer in layers) or 1
    most_v = max(layer[2] for layer in layers) or 1
    samples = sum(layer[1] * layer[2] for layer in layers) / (most_h * most_v)
    return int(width * height * samples * 2)


def _strip_bytes(image: Image.Image, width: int, height: int) -> int:
    """The strip (or tile) that libtiff decodes into a buffer of its own before Pillow copies
    it: a TIFF written as one strip holds the whole picture twice."""
    tags = getattr(image, "tag_v2", {})
    samples = int(tags.get(277, 1))  # SamplesPerPixel
    bits = tags.get(258, (8,))  # BitsPerSample, one per sample
    bits = max(bits) if isinstance(bits, tuple) and bits else int(bits or 8)
    if 322 in tags and 323 in tags:  # TileWidth, TileLength
        width, rows = int(tags[322]), int(tags[323])
    else:
        rows = min(height, int(tags.get(278, height)))  # RowsPerStrip
    return width * rows * samples * max(1, bits // 8)


def _shrink(image: Image.Image, min_size: tuple[int, int]) -> Image.Image:
    """The image reduced by the largest whole factor that keeps both sides at least
    ``min_size`` (a box filter, as a JPEG's draft scale), in its own mode where Pillow can:
    converting the full-size picture first would cost up to 7 bytes a pixel more."""
    factor = min(image.width // min_size[0], image.height // min_size[1])
    if factor < 2:
        return image
    if image.mode == "1":  # resizing these would pick pixels, not average them
        image = image.convert("L")
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    size = (image.width // factor, image.height // factor)
    return image.resize(size, Image.Resampling.BOX)


def decode_raw(
    data: bytes, min_size: tuple[int, int] | None = None
) -> tuple[Image.Image, ImageInfo]:
    """A camera RAW file as an upright RGB image: its embedded preview when that is at least
    ``min_size`` (as photo tools show RAW files; much faster), else the developed sensor data.

    Raises:
        ImageError: rawpy is not installed, or the file cannot be read.
    """
    try:
        import rawpy
    except ImportError:
        raise ImageError(
            "camera RAW file: install its support with pip install 'organizer[raw]'"
        ) from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            width, height = (
                (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
            )
            if width * height > MAX_PIXELS:
                raise ImageError(f"image too large ({width}x{height})")
            image, meta = _raw_preview(raw, rawpy, min_size, sizes.flip)
            if image is None:
                image = Image.fromarray(raw.postprocess(use_camera_wb=True, output_bps=8))
    except ImageError:
        raise
    except Exception as exc:  # rawpy's LibRawError family, or a bad embedded preview
        raise ImageError(f"cannot decode camera RAW: {_reason(exc)}") from None
    return to_rgb(image), ImageInfo(width, height, "RAW", raw_meta(data) or meta)


def raw_meta(data: bytes) -> PhotoMeta | None:
    """The metadata of a TIFF-based RAW file (DNG, NEF, CR2, ARW...) from its own directories
    (parsed as an EXIF block: Pillow cannot open a sensor mosaic as an image); None for other
    containers (their embedded preview's EXIF is used instead)."""
    if data[:4] not in _TIFF_MAGIC:
        return None
    try:
        exif = Image.Exif()
        exif.load(data)
    except Exception:  # directories Pillow cannot follow: the preview's EXIF will do
        return None
    return meta_from_exif(exif)


def file_meta(data: bytes, raw: bool = False) -> PhotoMeta | None:
    """The metadata of a file's bytes (all of them, or a JPEG's first HEADER_BYTES) without
    decoding its picture; None when its header cannot be read."""
    if raw:
        found = raw_meta(data)
        if found is not None:
            return found
        try:
            import rawpy

            with rawpy.imread(io.BytesIO(data)) as image:
                return _raw_preview(image, rawpy, None, 0)[1]
        except Exception:  # rawpy missing or the file unreadable
            return None
    try:
        return read_meta(open_image(data))
    except Exception:  # not an image any more, or a header cut short
        return None


# A JPEG keeps its EXIF in an APP1 segment near the start (at most 64 KB); other formats may
# keep it anywhere (WebP and PNG after the picture, TIFF wherever its offsets point).
HEADER_BYTES = 256 * 1024


def header_is_enough(prefix: bytes) -> bool:
    """Whether a file's first HEADER_BYTES hold all of its metadata: a JPEG's do."""
    return prefix[:3] == b"\xff\xd8\xff"


# LibRaw's orientation codes (sizes.flip) as the turn that makes the picture upright.
_FLIPS = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,
    6: Image.Transpose.ROTATE_270,
}


def _raw_preview(
    raw: Any, rawpy: Any, min_size: tuple[int, int] | None, flip: int
) -> tuple[Image.Image | None, PhotoMeta]:
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:
        return None, PhotoMeta()
    oriented = False
    if thumb.format == rawpy.ThumbFormat.JPEG:
        preview = open_image(thumb.data, ("JPEG",))
        meta = read_meta(preview)
        oriented = (meta.orientation or 1) != 1
        preview = ImageOps.exif_transpose(preview) or preview
    elif thumb.format == rawpy.ThumbFormat.BITMAP:
        preview, meta = Image.fromarray(thumb.data), PhotoMeta()
    else:
        return None, PhotoMeta()
    if not oriented and flip in _FLIPS:
        # Previews come as the sensor sees them: the RAW's orientation turns them upright.
        preview = preview.transpose(_FLIPS[flip])
    wanted = min(min_size) if min_size else 0
    return (preview, meta) if min(preview.size) >= wanted else (None, meta)


def _resize_dims(w: int, h: int, spec: PreprocessSpec) -> tuple[int, int]:
    th, tw = spec.size
    if spec.resize_mode == "squash":
        return tw, th
    if spec.resize_mode == "longest":
        ratio = max(h / th, w / tw)
        return max(1, round(w / ratio)), max(1, round(h / ratio))
    if th == tw:  # torchvision Resize(int): the short side becomes th, the long side truncates
        if w <= h:
            return th, int(th * h / w)
        return int(th * w / h), th
    ratio = min(h / th, w / tw)
    return max(tw, round(w / ratio)), max(th, round(h / ratio))


def to_model_input(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Resize and crop (or pad) an RGB image exactly as open_clip's eval transform does: the
    same sizes and offsets, the same antialiased filter (torch's SIMD copy of Pillow's where
    torch is importable, within a few grey levels of Pillow's own; see :mod:`organizer.resize`).

    Returns:
        uint8 array of shape (height, width, 3); normalisation is left to the embedder.
    """
    w, h = image.size
    new_w, new_h = _resize_dims(w, h, spec)
    if (new_w, new_h) != (w, h):
        resized = resize_rgb(image, (new_w, new_h), spec.interpolation)
        if resized is not None:
            return _place(resized, spec)
    th, tw = spec.size
    resample = (
        Image.Resampling.BILINEAR if spec.interpolation == "bilinear" else Image.Resampling.BICUBIC
    )
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample)
    if (new_w, new_h) != (tw, th):
        canvas = Image.new("RGB", (tw, th), (spec.fill_color,) * 3)
        canvas.paste(image, (_offset(new_w, tw), _offset(new_h, th)))
        image = canvas
    return np.asarray(image, dtype=np.uint8)


def _place(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Resized pixels cropped or padded to the spec's size at :func:`_offset`, as Pillow's
    paste onto a canvas of the fill colour places them."""
    th, tw = spec.size
    h, w = pixels.shape[:2]
    if (h, w) == (th, tw):
        return np.ascontiguousarray(pixels)
    canvas = np.full((th, tw, 3), spec.fill_color, dtype=np.uint8)
    rows = _overlap(_offset(h, th), h, th)
    cols = _overlap(_offset(w, tw), w, tw)
    canvas[rows[1], cols[1]] = pixels[rows[0], cols[0]]
    return canvas


def _overlap(offset: int, have: int, want: int) -> tuple[slice, slice]:
    """Along one axis: the part of ``have`` pixels placed at ``offset`` that falls on a canvas
    of ``want`` pixels, as (source, canvas) slices."""
    source, target = max(0, -offset), max(0, offset)
    length = max(0, min(have - source, want - target))
    return slice(source, source + length), slice(target, target + length)


def _offset(have: int, want: int) -> int:
    """Where the image goes on the canvas: torchvision's centre crop rounds, its pad floors."""
    if have >= want:
        return -round((have - want) / 2.0)
    return (want - have) // 2


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    """A copy no larger than ``max_side`` on either side (for reports)."""
    copy = image.copy()
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return copy
