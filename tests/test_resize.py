"""The model's input through torch's antialiased resize: within a grey level of Pillow's, the
same geometry (sizes, crops, padding), Pillow's own where torch cannot be imported, and one
thread per decode worker."""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import pytest
from PIL import Image

from organizer import resize
from organizer.imaging import PreprocessSpec, decode, to_model_input
from organizer.pipeline import DecodePool, Job
from tests.fakes import image_bytes, picture, threads_prepare, write_picture

MEAN = (0.5, 0.5, 0.5)


@contextlib.contextmanager
def without_torch(monkeypatch):
    """As where torch is not installed: importing it fails."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)
        resize._torch.cache_clear()
        try:
            yield
        finally:
            resize._torch.cache_clear()


@pytest.fixture(autouse=True)
def torch_for_small_pictures_too(monkeypatch):
    """These tests' pictures are small: torch resizes them all the same."""
    monkeypatch.setattr(resize, "MIN_PIXELS", 0)


def test_a_small_picture_is_resized_by_pillow(monkeypatch):
    monkeypatch.undo()  # the default threshold
    small, large = photo((400, 300)), photo((800, 600))
    assert resize.resize_rgb(small, (85, 64), "bicubic") is None
    assert resize.resize_rgb(large, (85, 64), "bicubic") is not None


def pillow_input(image: Image.Image, spec: PreprocessSpec, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr("organizer.imaging.resize_rgb", lambda *args: None)
        return to_model_input(image, spec)


def photo(size: tuple[int, int]) -> Image.Image:
    """A generated picture through a JPEG round trip, as a decoded photo comes."""
    return decode(image_bytes(picture(7, size), "JPEG", quality=90))[0]


SPECS = {
    "shortest": PreprocessSpec((64, 64), MEAN, MEAN),
    "shortest, not square": PreprocessSpec((48, 80), MEAN, MEAN),
    "squash": PreprocessSpec((64, 64), MEAN, MEAN, resize_mode="squash"),
    "longest, padded": PreprocessSpec((64, 64), MEAN, MEAN, resize_mode="longest", fill_color=9),
    "bilinear": PreprocessSpec((64, 64), MEAN, MEAN, interpolation="bilinear"),
}
SIZES = {
    "landscape": (900, 600),
    "portrait": (600, 900),
    "square": (300, 300),
    "tiny, enlarged": (30, 20),
    "a strip": (1000, 70),
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_torch_resize_is_within_a_grey_level_of_pillow(spec, size, monkeypatch):
    """Same shape, same crop and padding (a pixel's shift would differ by far more than a grey
    level at the pictures' sharp edges), pixels within what rounding makes."""
    image = photo(size)
    ours = to_model_input(image, spec)
    theirs = pillow_input(image, spec, monkeypatch)
    assert ours.shape == theirs.shape == (*spec.size, 3)
    assert ours.dtype == np.uint8 and ours.flags["C_CONTIGUOUS"]
    difference = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert difference.max() <= 2 and difference.mean() < 0.05


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_where_pillow_runs_its_passes_the_other_way_pixels_stay_within_a_few_levels(
    spec, monkeypatch
):
    """Pillow 13 runs its vertical pass first where that is cheaper, often when the height
    shrinks more than the width (python-pillow/Pillow#9549); torch, as Pillow did before,
    always runs the horizontal pass first: the rounding between the passes differs, by a few
    levels at hard edges."""
    image = photo((31, 90))
    ours = to_model_input(image, spec)
    theirs = pillow_input(image, spec, monkeypatch)
    difference = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert ours.shape == theirs.shape
    assert difference.max() <= 8 and difference.mean() < 0.25


def test_padding_keeps_the_fill_colour_exactly():
    spec = SPECS["longest, padded"]
    pixels = to_model_input(photo((900, 300)), spec)  # 64 x 21 of picture, centred
    assert (pixels[:21] == 9).all() and (pixels[43:] == 9).all()
    assert not (pixels[21:43] == 9).all()


def test_without_torch_pillow_resizes_as_open_clip_does(monkeypatch):
    from open_clip.transform import image_transform

    spec = PreprocessSpec((32, 32), MEAN, (0.25, 0.25, 0.25))
    image = picture(5, (300, 200))
    theirs = image_transform(32, is_train=False, mean=spec.mean, std=spec.std)(image)
    with without_torch(monkeypatch):
        assert resize.resize_rgb(image, (48, 32), "bicubic") is None
        ours = (to_model_input(image, spec).astype(np.float32) / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(ours, theirs.permute(1, 2, 0).numpy(), atol=1e-4)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_a_picture_not_in_rgb_goes_through_pillow(mode):
    image = picture(3, (120, 80)).convert(mode)
    assert resize.resize_rgb(image, (60, 40), "bicubic") is None
    assert to_model_input(image, SPECS["shortest"]).shape == (64, 64, 3)


def test_an_unknown_filter_or_an_enlargement_goes_through_pillow():
    assert resize.resize_rgb(photo((90, 60)), (30, 20), "lanczos") is None
    assert resize.resize_rgb(photo((90, 60)), (91, 20), "bicubic") is None
    assert resize.resize_rgb(photo((90, 60)), (90, 60), "bicubic") is not None


def test_decode_workers_run_torch_on_one_thread_and_survive_bad_files(tmp_path):
    big = tmp_path / "big.jpg"
    picture(3, (800, 600)).save(big)  # over MIN_PIXELS: torch resizes it
    paths = [
        write_picture(tmp_path / "good.jpg", 1),
        tmp_path / "empty.jpg",
        tmp_path / "junk.jpg",
        tmp_path / "cut.jpg",
    ]
    paths[1].write_bytes(b"")
    paths[2].write_bytes(os.urandom(5000))
    paths[3].write_bytes(paths[0].read_bytes()[:300])
    jobs = [Job(i, os.fsencode(p), -1, 0) for i, p in enumerate(paths)]
    with DecodePool(2, SPECS["shortest"]) as pool:
        results = {p.key: p for p in pool.results(jobs)}
    assert results[0].error is None and results[0].pixels.shape == (64, 64, 3)
    assert all(results[k].error and "crashed" not in results[k].error for k in (1, 2, 3))
    model_size = PreprocessSpec((256, 256), MEAN, MEAN)  # no draft shrinks the big one
    with DecodePool(1, model_size, prepare_fn=threads_prepare) as pool:
        small, large = pool.results([jobs[0], Job(9, os.fsencode(big), -1, 0)])
    assert small.error == "torch not imported"  # a small picture is Pillow's
    assert large.error == "torch threads: 1"


def test_a_decode_worker_imports_torch_only_when_it_resizes_a_large_picture():
    """A decode worker spares torch's ~260 MB until a picture needs torch's resize (beside a
    GPU, most never do); then torch runs on one thread, as in every decode worker."""
    import subprocess

    code = (
        "import sys; from organizer import resize; resize.use_one_thread(now=False); "
        "assert 'torch' not in sys.modules; from PIL import Image; "
        "assert resize.resize_rgb(Image.new('RGB', (800, 600)), (400, 300), 'bicubic') is not None; "
        "import torch; print(torch.get_num_threads())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
