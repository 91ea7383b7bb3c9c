"""Test doubles: a numpy embedder (no torch) and image generators."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from organizer.embed import ModelSpec
from organizer.imaging import PreprocessSpec

TINY_CONFIG = Path(__file__).parent / "data" / "tiny-clip.json"


class FakeEmbedder:
    """Deterministic vectors from pixels through a fixed random projection; counts its calls."""

    def __init__(self, spec: ModelSpec | None = None, dim: int = 16, size: int = 32):
        self.spec = spec or ModelSpec("fake", "none")
        self.dim = dim
        self.preprocess = PreprocessSpec((size, size), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.device = "cpu"
        self.precision = "fp32"
        rng = np.random.default_rng(0)
        self._w = rng.standard_normal((size * size * 3, dim)).astype(np.float32)
        self.images_embedded = 0

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        self.images_embedded += len(batch)
        x = batch.reshape(len(batch), -1).astype(np.float32) / 255.0 - 0.5
        v = x @ self._w
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import hashlib

        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim))
        v = np.asarray(rows, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def picture(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A distinct, asymmetric RGB picture: noise background plus coloured shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle([x0, y0, x1, y1], fill=color)
    draw.polygon([(0, 0), (w // 3, 0), (0, h // 3)], fill=(255, 0, 0))  # marks the top-left
    return image


def write_picture(path: Path, seed: int, fmt: str | None = None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(seed).save(path, format=fmt, **save)
    return path


def image_bytes(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def make_folder(root: Path, n: int, start_seed: int = 0, ext: str = ".jpg") -> list[Path]:
    """``n`` distinct pictures under ``root`` (some in a subfolder)."""
    paths = []
    for i in range(n):
        sub = root / ("sub" if i % 3 == 2 else "")
        paths.append(write_picture(sub / f"img{start_seed + i:03d}{ext}", start_seed + i))
    return paths


def uneven_prepare(job, spec, skip_decode, draft):
    """A decode step that pauses 0.2 s on files whose name ends in an even digit (img000.jpg),
    1.2 s on the others, then works."""
    import os
    import time

    from organizer.pipeline import prepare

    time.sleep(0.2 if int(os.path.basename(job.path)[-5:-4]) % 2 == 0 else 1.2)
    return prepare(job, spec, skip_decode, draft)


def threads_prepare(job, spec, skip_decode, draft):
    """A decode step that prepares the file, then reports whether the worker has imported
    torch, and on how many threads torch runs there."""
    import sys

    from organizer.pipeline import Prepared, prepare

    prepare(job, spec, skip_decode, draft)
    if "torch" not in sys.modules:
        return Prepared(job.key, job.size, job.mtime_ns, error="torch not imported")
    threads = sys.modules["torch"].get_num_threads()
    return Prepared(job.key, job.size, job.mtime_ns, error=f"torch threads: {threads}")


def misbehaving_prepare(job, spec, skip_decode, draft):
    """A decode step that crashes on files named crash*, hangs on hang*, else works."""
    import os
    import signal
    import time

    from organizer.pipeline import prepare

    name = os.path.basename(job.path)
    if name.startswith(b"crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith(b"hang"):
        time.sleep(3600)
    return prepare(job, spec, skip_decode, draft)


def clustered_vectors(
    n_clusters: int, per_cluster: int, dim: int = 16, spread: float = 0.15, seed: int = 0
):
    """Unit vectors around ``n_clusters`` random centres; returns (vectors, true labels, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    v = centres[labels] + spread * rng.standard_normal((len(labels), dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), labels, centres


def photos_root(lib) -> Path:
    """Where a test library's photos go: beside its folder, or for a library on a server
    beside the test's cache folder (conftest puts both in the test's tmp_path)."""
    if isinstance(lib.path, Path):
        return lib.path.parent / "photos"
    return Path(os.environ["XDG_CACHE_HOME"]).parent / "photos"


def store_vectors(lib, vectors: np.ndarray, relpaths: list[str], model=("fake", "none")) -> None:
    """Write images + vectors straight into a library, as ingest would store them."""
    from organizer.embed import ModelSpec
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    with write_transaction(lib.engine) as conn:
        found = q.library_model(conn)
        model_id = found.id if found else q.insert_model(conn, ModelSpec(*model), vectors.shape[1])
        roots = q.all_roots(conn)
        if not roots:
            photos_root(lib).mkdir(parents=True, exist_ok=True)  # a present root, as on disk
        root_id = next(iter(roots)) if roots else q.add_root(conn, str(photos_root(lib)))
        for rel, v in zip(relpaths, vectors, strict=True):
            image_id = q.insert_image(
                conn,
                root_id=root_id,
                relpath=rel.encode(),
                size=1,
                mtime_ns=1,
                status="ok",
                content_hash=rel,
                width=10,
                height=10,
            )
            q.put_vector(conn, image_id, model_id, v)


def slow_prepare(job, spec, skip_decode, draft):
    """The real decode step, 50 ms slower per file (to act in the middle of a run)."""
    import time

    from organizer.pipeline import prepare

    time.sleep(0.05)
    return prepare(job, spec, skip_decode, draft)


def photo_exif(
    taken: str | None = "2008:10:22 14:03:00",
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
    camera: tuple[str, str] | None = ("Canon", "Canon EOS 5D"),
    **extra: object,
) -> Image.Exif:
    """An EXIF block as a camera writes it: DateTimeOriginal (with OffsetTimeOriginal), GPS
    as degrees/minutes/seconds with N/S and E/W references, make and model. ``extra`` sets
    raw tags of the EXIF sub-IFD by number (``t33434=...``)."""
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    if camera:
        exif[271], exif[272] = camera
    sub = exif.get_ifd(0x8769)
    if taken is not None:
        sub[36867] = taken
    if offset is not None:
        sub[36881] = offset
    for key, value in extra.items():
        sub[int(key.lstrip("t"))] = value
    if gps is not None:
        lat, lon = gps
        info = exif.get_ifd(0x8825)
        info[1], info[3] = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
        info[2], info[4] = (_dms(abs(lat), IFDRational), _dms(abs(lon), IFDRational))
    return exif


def _dms(degrees: float, rational: type) -> tuple:
    d = int(degrees)
    m = int((degrees - d) * 60)
    s = round(((degrees - d) * 60 - m) * 60 * 10000)
    return rational(d, 1), rational(m, 1), rational(s, 10000)


def write_photo(
    path: Path, seed: int, exif: Image.Exif | None = None, fmt: str | None = None
) -> Path:
    """A picture with an EXIF block (``photo_exif()`` unless given)."""
    exif = photo_exif() if exif is None else exif
    return write_picture(path, seed, fmt, exif=exif.tobytes())


def tiff_with_exif(exif: Image.Exif) -> bytes:
    """A TIFF whose IFD0 points to EXIF and GPS sub-IFDs, as cameras and RAW containers
    write them (Pillow's TIFF writer leaves sub-IFDs out); its picture is a 4x4 grey."""
    exif[256], exif[257], exif[258], exif[259], exif[262] = 4, 4, 8, 1, 1
    exif[277], exif[278], exif[279], exif[273] = 1, 4, 16, 0
    # The block without its "Exif\0\0" marker is a TIFF; Pillow points the strip offset
    # past the directories it writes, where the pixels go.
    return exif.tobytes()[6:] + bytes([128]) * 16


AREZZO = (43.4633, 11.87997)  # in Arezzo, Tuscany: 43° 27' 47.88" N, 11° 52' 47.89" E
SERIAL = "SERIAL123"


def camera_exif(
    make: str = "Canon",
    model: str = "Canon EOS 5D",
    lens: str = "EF50mm f/1.8 II",
    position: tuple[float, float] | None = AREZZO,
    offset: str | None = "+02:00",
) -> bytes:
    """``photo_exif()`` with all a camera writes: lens, 1/250 s at f/2.8, ISO 400, 50 mm,
    the body's serial number (``SERIAL``), a maker note that repeats it, and the altitude."""
    from PIL.TiffImagePlugin import IFDRational

    exif = photo_exif(
        offset=offset,
        gps=position,
        camera=(make, model),
        t33434=IFDRational(1, 250),
        t33437=IFDRational(28, 10),
        t34855=400,
        t37386=IFDRational(50, 1),
        t42036=lens,
        t42033=SERIAL,  # BodySerialNumber (0xA431)
        t37500=b"Canon\0serial " + SERIAL.encode(),  # MakerNote (0x927C)
    )
    if position is not None:
        gps = exif.get_ifd(0x8825)
        gps[5], gps[6] = 0, IFDRational(250, 1)
    return exif.tobytes()
