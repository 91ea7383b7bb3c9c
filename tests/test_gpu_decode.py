"""JPEGs decoded on the model's device (nvJPEG on CUDA) against the Pillow path.

The device path is the same code on any torch device: forced onto the CPU here (torchvision
decodes JPEGs there with libjpeg-turbo), it runs end to end on machines without a GPU. The
CUDA test checks what only a GPU can: that nvJPEG gives the pixels the CPU gives.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from organizer import pipeline
from organizer.config import Settings, resolve_settings
from organizer.embed import device_decode as dd
from organizer.embed import request_spec
from organizer.embed.openclip import load
from organizer.errors import OptionsError
from organizer.imaging import PreprocessSpec, device_jpeg
from organizer.ingest import run
from organizer.library import Library
from organizer.pipeline import DecodePool, Job, prepare, prepare_encoded
from organizer.store import queries as q
from tests.fakes import TINY_CONFIG, FakeEmbedder, image_bytes, photo_exif, picture

SPEC = PreprocessSpec((32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class _OnDevice:
    """What DeviceDecoder reads of an embedder: its device."""

    def __init__(self, device: str) -> None:
        self.device = device


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _job(path: Path) -> Job:
    return Job(0, os.fsencode(path), -1, -1)


def _fallback(spec: PreprocessSpec):
    return lambda data: dd.with_pillow(data, spec)


def _device_pixels(paths, spec=SPEC, device="cpu"):
    """Each file through the device path: (pixels or None, error or None, Prepared); those
    the decode processes refuse are not handed on (as in a run)."""
    decoder = dd.DeviceDecoder(_OnDevice(device), spec)  # type: ignore[arg-type]
    prepared = [prepare_encoded(_job(p), spec) for p in paths]
    items = []
    for p in prepared:
        if p.error is not None:
            continue
        if p.encoded is None:
            items.append(p.pixels)
        else:
            orientation = p.info.meta.orientation or 1
            items.append(dd.EncodedJpeg(p.encoded, orientation, p.info.width, p.info.height))
    stacked, errors = decoder.pixels(items, _fallback(spec))
    made, reasons = iter(stacked.cpu().numpy()), iter(errors)
    out = []
    for p in prepared:
        error = p.error or next(reasons)
        out.append((None if error else next(made), None if p.error else error, p))
    return out


def _jpeg(image: Image.Image, **save) -> bytes:
    return image_bytes(image, "JPEG", quality=92, **save)


def _spec(size=(32, 32), *rest) -> PreprocessSpec:
    return PreprocessSpec(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), *rest)


@pytest.mark.parametrize(
    "size, mode, spec",
    [
        ((400, 300), "RGB", SPEC),  # shrunk, wider than tall: cropped
        ((300, 500), "RGB", SPEC),  # taller than wide
        ((20, 12), "RGB", SPEC),  # smaller than the input: enlarged
        ((400, 300), "L", SPEC),  # greyscale
        ((1600, 1200), "RGB", SPEC),  # large enough for Pillow's draft scale
        ((400, 300), "RGB", _spec((24, 40))),  # an input that is not square
        ((400, 100), "RGB", _spec((32, 32), "bilinear")),
        ((400, 100), "RGB", _spec((32, 32), "bicubic", "longest", 7)),  # padded
        ((400, 300), "RGB", _spec((32, 32), "bicubic", "squash")),
    ],
)
def test_device_pixels_match_pillows(tmp_path, size, mode, spec):
    image = picture(3, (100, 75)).resize(size, Image.Resampling.BICUBIC)
    path = _write(tmp_path / "a.jpg", _jpeg(image.convert(mode)))
    ((pixels, error, prepared),) = _device_pixels([path], spec)
    cpu = prepare(_job(path), spec)
    assert error is None and prepared.encoded is not None and prepared.info == cpu.info
    assert pixels.shape == cpu.pixels.shape == (*spec.size, 3)
    diff = np.abs(pixels.astype(int) - cpu.pixels.astype(int))
    assert diff.mean() < 1.5, diff.mean()  # the resize kernels and the draft scale differ


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientations_turn_as_on_the_cpu(tmp_path, orientation):
    exif = photo_exif()
    exif[0x0112] = orientation
    image = picture(5, (120, 64)).resize((480, 256), Image.Resampling.BICUBIC)
    path = _write(tmp_path / "o.jpg", _jpeg(image, exif=exif.tobytes()))
    ((pixels, error, prepared),) = _device_pixels([path])
    cpu = prepare(_job(path), SPEC)
    assert error is None and prepared.info == cpu.info
    assert prepared.info.meta.orientation == orientation
    diff = np.abs(pixels.astype(int) - cpu.pixels.astype(int))
    assert diff.mean() < 1.5, diff.mean()  # a wrong turn differs by tens


def _jpeg_bomb() -> bytes:
    """A small JPEG whose header claims 30000 x 30000 pixels."""
    data = bytearray(_jpeg(Image.new("RGB", (16, 16), "red")))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") * 2
    return bytes(data)


def _files(root: Path) -> dict[str, Path]:
    good = _jpeg(picture(1, (200, 150)))
    return {
        "cmyk.jpg": _write(root / "cmyk.jpg", _jpeg(picture(2).convert("CMYK"))),
        "png.jpg": _write(root / "png.jpg", image_bytes(picture(3), "PNG")),
        "mpo.jpg": _write(
            root / "mpo.jpg",
            image_bytes(picture(4), "MPO", save_all=True, append_images=[picture(5)]),
        ),
        "truncated.jpg": _write(root / "truncated.jpg", good[: len(good) // 2]),
        "bomb.jpg": _write(root / "bomb.jpg", _jpeg_bomb()),
        "text.jpg": _write(root / "text.jpg", b"not an image at all"),
        "empty.jpg": _write(root / "empty.jpg", b""),
        "good.jpg": _write(root / "good.jpg", good),
    }


def test_what_the_device_does_not_take_is_decoded_or_refused_as_on_the_cpu(tmp_path):
    files = _files(tmp_path)
    results = dict(zip(files, _device_pixels(list(files.values())), strict=True))
    for name, path in files.items():
        pixels, error, prepared = results[name]
        cpu = prepare(_job(path), SPEC)
        assert error == cpu.error or prepared.error == cpu.error, name
        assert prepared.info == cpu.info or cpu.info is None, name
        if cpu.pixels is None:
            assert pixels is None, name
        elif name != "good.jpg":  # decoded by Pillow in both: the very same pixels
            assert prepared.encoded is None and (pixels == cpu.pixels).all(), name
    # Left to the device only where it can be trusted; the bomb was refused by its header.
    encoded = {n for n, (_, _, p) in results.items() if p.encoded is not None}
    assert encoded == {"good.jpg"}  # a truncated one too is Pillow's to refuse
    assert "decompression bomb" in results["bomb.jpg"][2].error
    assert results["truncated.jpg"][2].error == prepare(_job(files["truncated.jpg"]), SPEC).error


EOI = b"\xff\xd9"


def _with_end_marker(data: bytes):
    """device_jpeg as if the file ended with the end-of-image marker."""
    return device_jpeg(data + EOI if data.startswith(b"\xff\xd8") else data)


def test_a_jpeg_without_its_end_marker_is_left_to_pillow():
    good = _jpeg(picture(1, (200, 150)))
    assert device_jpeg(good) is not None
    assert device_jpeg(good + b"\0\0\n") is not None  # padding after the marker
    assert device_jpeg(good[:-2]) is None  # cut short
    assert device_jpeg(good + b"trailing bytes") is None  # what a camera appended


def test_a_batch_the_device_refuses_is_decoded_one_by_one(tmp_path, monkeypatch):
    paths = [_write(tmp_path / f"{i}.jpg", _jpeg(picture(i, (80, 60)))) for i in range(3)]
    calls = []
    real = dd._decode_jpegs

    def picky(data, device):
        calls.append(len(data))
        if len(data) > 1 or len(calls) == 3:  # the batch, then the second image alone
            raise RuntimeError("nvJPEG says no")
        return real(data, device)

    monkeypatch.setattr(dd, "_decode_jpegs", picky)
    out = _device_pixels(paths)
    assert calls == [3, 1, 1, 1]
    for (pixels, error, _), path in zip(out, paths, strict=True):
        assert error is None
        cpu = prepare(_job(path), SPEC).pixels
        assert np.abs(pixels.astype(int) - cpu.astype(int)).mean() < 1.5
    # The second was refused: Pillow decoded it, so its pixels are Pillow's exactly.
    assert (out[1][0] == prepare(_job(paths[1]), SPEC).pixels).all()


def test_decoded_pictures_come_in_batches_of_bounded_pixels(monkeypatch):
    monkeypatch.setattr(dd, "BATCH_PIXELS", 1000)
    jpegs = [(i, dd.EncodedJpeg(b"", 1, w, 10)) for i, w in enumerate([40, 40, 30, 200, 10])]
    chunks = [[i for i, _ in chunk] for chunk in dd._chunks(jpegs)]
    assert chunks == [[0, 1], [2], [3], [4]]


@pytest.fixture(scope="module")
def tiny_cpu():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(request_spec(str(TINY_CONFIG), "none"), "cpu", "fp32", offline=True)


def test_the_decoder_is_there_only_where_it_is_asked_for(tiny_cpu, monkeypatch):
    spec = tiny_cpu.preprocess
    assert dd.decoder_for(tiny_cpu, "auto", spec) is None  # auto: CUDA only
    assert dd.decoder_for(tiny_cpu, "workers", spec) is None
    assert dd.decoder_for(FakeEmbedder(), "device", spec) is None  # not a torch model
    assert isinstance(dd.decoder_for(tiny_cpu, "device", spec), dd.DeviceDecoder)

    def broken(data, device):
        raise RuntimeError("no nvJPEG in this build")

    monkeypatch.setattr(dd, "_decode_jpegs", broken)
    with pytest.warns(UserWarning, match="decoded with Pillow.*no nvJPEG in this build"):
        assert dd.decoder_for(tiny_cpu, "device", spec) is None


def test_the_setting_is_a_choice_of_its_variable():
    assert resolve_settings(env={"ORGANIZER_JPEG_DECODE": "device"}).jpeg_decode == "device"
    assert resolve_settings(env={}).jpeg_decode == "auto"
    with pytest.raises(OptionsError, match=r"unknown jpeg_decode 'gpu' \(ORGANIZER_JPEG_DECODE\)"):
        resolve_settings(env={"ORGANIZER_JPEG_DECODE": "gpu"})


def _ingested(
    root: Path, library: Path, jpeg_decode: str, workers: int | None = 0
) -> tuple[dict, dict]:
    settings = Settings(
        library=library,
        model=str(TINY_CONFIG),
        pretrained="none",
        device="cpu",
        runtime="torch",
        batch_size=4,
        workers=workers,
        jpeg_decode=jpeg_decode,
    )
    with Library.open(settings, create=True) as lib, lib.engine.connect() as conn:
        summary = lib.ingest([root])
        model = q.library_model(conn)
        ids, vecs = q.ok_vectors(conn, model.id, model.dim)
        images = conn.execute(q.select(q.images)).all()
    by_id = dict(zip(ids.tolist(), vecs, strict=True))
    rows = {
        r.relpath.decode(): (
            r.status,
            r.failure_reason,
            r.content_hash,
            r.width,
            r.height,
            r.format,
        )
        for r in images
    }
    vectors = {r.relpath.decode(): by_id.get(r.id) for r in images}
    assert summary.failed == sum(1 for r in rows.values() if r[0] == "failed")
    return rows, vectors


@pytest.mark.parametrize("workers", [0, None])
def test_an_ingest_on_the_device_path_records_what_the_cpu_path_does(
    tmp_path, workers, monkeypatch
):
    root = tmp_path / "photos"
    files = _files(root)
    (root / "copy-of-truncated.jpg").write_bytes(files["truncated.jpg"].read_bytes())
    for i in range(6):
        exif = photo_exif()
        exif[0x0112] = i + 3
        _write(root / f"p{i}.jpg", _jpeg(picture(10 + i, (160, 120)), exif=exif.tobytes()))
    decoded = []
    real = dd._decode_jpegs
    monkeypatch.setattr(dd, "_decode_jpegs", lambda d, dev: decoded.extend(d) or real(d, dev))
    cpu_rows, cpu_vectors = _ingested(root, tmp_path / "lib-cpu", "workers", workers)
    assert decoded == []
    if workers == 0:  # in this process: the truncated file reaches the device, as a file
        # cut short where its end marker survives would; the device and Pillow refuse it
        monkeypatch.setattr(pipeline, "device_jpeg", _with_end_marker)
    dev_rows, dev_vectors = _ingested(root, tmp_path / "lib-dev", "device", workers)
    # the probe, then good and p0-p5 (and the truncated file, in this process)
    assert len(decoded) >= 1 + 7 + (workers == 0)
    assert dev_rows == cpu_rows
    assert sorted(n for n, r in cpu_rows.items() if r[0] == "ok") == sorted(
        ["good.jpg", "cmyk.jpg", "png.jpg", "mpo.jpg", *(f"p{i}.jpg" for i in range(6))]
    )
    assert cpu_rows["copy-of-truncated.jpg"][0] == "failed"
    for name, vector in cpu_vectors.items():
        if vector is not None:
            assert float(vector @ dev_vectors[name]) > 0.999, name


def test_no_decoder_on_the_device_after_all_decodes_with_pillow_here(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    _files(root)

    def broken(data, device):
        raise RuntimeError("driver too old")

    monkeypatch.setattr(dd, "_decode_jpegs", broken)
    cpu_rows, cpu_vectors = _ingested(root, tmp_path / "lib-cpu", "workers")
    with pytest.warns(UserWarning, match="driver too old"):
        dev_rows, dev_vectors = _ingested(root, tmp_path / "lib-dev", "device")
    assert dev_rows == cpu_rows
    for name, vector in cpu_vectors.items():  # Pillow both times: the same vectors
        if vector is not None:
            assert np.allclose(vector, dev_vectors[name], atol=1e-6), name


def test_nvjpeg_on_cuda_gives_the_cpus_pixels(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    paths = []
    for i, size in enumerate([(1024, 768), (640, 960), (300, 200)]):
        image = picture(i, (size[0] // 8, size[1] // 8)).resize(size, Image.Resampling.BICUBIC)
        paths.append(_write(tmp_path / f"{i}.jpg", _jpeg(image)))
    files = _files(tmp_path / "odd")
    on_cuda = _device_pixels([*paths, *files.values()], device="cuda")
    on_cpu = _device_pixels([*paths, *files.values()], device="cpu")
    for (a, error_a, _), (b, error_b, _) in zip(on_cuda, on_cpu, strict=True):
        assert error_a == error_b
        if a is not None:
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
    model = load(request_spec(str(TINY_CONFIG), "none"), "cuda", "fp32", offline=True)
    assert isinstance(dd.decoder_for(model, "auto", model.preprocess), dd.DeviceDecoder)


# -- what a review found: the device path must not cost the run its decode processes, a run,
# or the workers' memory --------------------------------------------------------------------

REVIEW_SPEC = PreprocessSpec((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _jpegs(root: Path, n: int, start: int = 0) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        data = image_bytes(picture(i, (160, 120)), "JPEG", quality=90)
        (root / f"p{i:03d}.jpg").write_bytes(data)


def _review_settings(library: Path, **more) -> Settings:
    return Settings(
        library=library,
        model=str(TINY_CONFIG),
        pretrained="none",
        runtime="torch",
        batch_size=4,
        workers=2,
        **more,
    )


# -- 1. auto mode on a machine that looks like it has a GPU but whose model runs elsewhere ----


def test_auto_without_a_device_decoder_still_decodes_in_the_workers(tmp_path, monkeypatch):
    """ORGANIZER_JPEG_DECODE=auto (the default) and an NVIDIA driver on the machine
    (/proc/driver/nvidia/version, what _expected_device looks at) but the model ends up
    without a device decoder: a CPU-only torch wheel, CUDA_VISIBLE_DEVICES='', a GPU torch
    cannot use, or a torchvision without nvJPEG (decoder_for's probe fails). The decode
    workers then leave every JPEG encoded and the one main process decodes them all, one
    after another, with Pillow (device_decode.with_pillow): the decode pool idles."""
    photos, library = tmp_path / "photos", tmp_path / "lib"
    _jpegs(photos, 2)
    with Library.open(_review_settings(library, device="auto"), create=True) as lib:
        lib.ingest([photos])  # the library now records its input: the next run reads while
    _jpegs(photos, 12, start=2)  # the model loads, so _prepared guesses the device
    monkeypatch.setattr(run, "_expected_device", lambda options: "cuda")  # a driver is there
    here = []
    real = dd.with_pillow
    monkeypatch.setattr(dd, "with_pillow", lambda data, spec: here.append(1) or real(data, spec))
    with Library.open(_review_settings(library, device="auto"), create=True) as lib:
        summary = lib.ingest([photos])
    assert summary.new == 12
    assert here == [], f"{len(here)} of 12 JPEGs decoded in the main process"


# -- 2. an error while making the model's input on the device aborts the whole ingest -------


def test_running_out_of_device_memory_on_one_big_picture_does_not_abort_the_run(
    tmp_path, monkeypatch
):
    """The device path decodes a JPEG at full size (no DCT draft) and makes a float32 copy
    of it to resize: 1.4 GB for one 96 Mpx JPEG (Pillow's path: 23 MB), ~2.6 GB at
    MAX_PIXELS. Only _decode is guarded; a torch.OutOfMemoryError (a RuntimeError) in
    to_model_input escapes DeviceDecoder.pixels and ends the ingest with a traceback,
    where the file should go to the Pillow fallback (or be recorded failed)."""
    import torch

    photos = tmp_path / "photos"
    _jpegs(photos, 6)
    real, calls = dd.to_model_input, []

    def oom_on_big(x, spec):
        calls.append(1)
        if len(calls) == 3:  # one picture of the run
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.15 GiB")
        return real(x, spec)

    monkeypatch.setattr(dd, "to_model_input", oom_on_big)
    settings = _review_settings(tmp_path / "lib", device="cpu", jpeg_decode="device")
    with Library.open(settings, create=True) as lib:
        summary = lib.ingest([photos])
    assert (summary.new, summary.failed) == (6, 0)  # the one Pillow decoded


# -- 3. decode workers now hold torch: ~280 MB of private memory each -------------------------


def _private_dirty_mb(pid: int) -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"Private_Dirty:\s+(\d+)", text).group(1)) // 1024


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux only")
def test_a_decode_worker_that_leaves_jpegs_encoded_stays_small():
    """Beside a GPU the decode workers resize no JPEG: they do not import torch (~280 MB of
    private memory apiece with the CUDA wheel, times cores-1 workers)."""
    with DecodePool(2, REVIEW_SPEC, prepare_fn=prepare_encoded) as pool:
        sizes = [_private_dirty_mb(w.process.pid) for w in pool._workers]
    assert max(sizes) < 100, sizes
