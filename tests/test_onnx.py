"""open_clip's towers in ONNX Runtime and OpenVINO: the same vectors as torch, exported once,
checked on every open, a torch-free text query, and each plan loaded as it says (the plans
themselves: tests/test_runtime.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from organizer.choices import Device, Precision, Runtime
from organizer.embed import ModelSpec, RandomWeightsWarning, loader, onnx, request_spec
from organizer.embed.backend import cache as model_cache
from organizer.embed.backend import engines, export, tokenizer, towers
from organizer.embed.runtime import Capabilities, Plan
from organizer.errors import ModelError
from tests.fakes import TINY_CONFIG

TEXTS = [
    "a photo of a dog.",
    "",
    "x",
    "A Photo   of a CAFÉ &amp; a 🐶, 12 dogs; it's 東京",
    "a photo of " + "a long caption " * 20,
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return request_spec(str(TINY_CONFIG), "none")


@pytest.fixture(scope="module")
def reference(spec):
    from organizer.embed import openclip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return openclip.load(spec, "cpu", "fp32")


def _pixels(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _plan(precision: str = "fp32", runtime: Runtime = Runtime.ONNX) -> Plan:
    """A CPU plan with exported towers; ``runtime`` runs the images."""
    return Plan(Device.CPU, Precision(precision), runtime, exported=True)


def _embedder(spec, precision="fp32", runtime: Runtime = Runtime.ONNX) -> onnx.OnnxEmbedder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnx.OnnxEmbedder(spec, _plan(precision, runtime))


needs_openvino = pytest.mark.skipif(
    not Capabilities.probe(gpu=False).openvino,
    reason="OpenVINO is not installed (not on this platform)",
)


def test_both_towers_give_torchs_vectors_and_export_once(cache, spec, reference):
    first = _embedder(spec)
    with pytest.warns(export.ExportNotice, match="image tower"):
        images = first.embed_pixels(_pixels())
    with pytest.warns(export.ExportNotice, match="text tower"):
        texts = first.embed_texts(TEXTS * 30)  # several batches of mixed lengths
    assert first.runtime == "onnxruntime"
    assert images.dtype == np.float32 and texts.dtype == np.float32
    assert float((images * reference.embed_pixels(_pixels())).sum(1).min()) >= 0.9999
    want = reference.embed_texts(TEXTS * 30)
    assert float((texts * want).sum(1).min()) >= 0.9999
    assert first.embed_texts([]).shape == (0, reference.dim)

    record = json.loads(next(cache.glob("*/text.json")).read_text())
    assert len(record["fast_tokenizer"]) == 64 and record["cos_min"] >= 0.9999

    # A second process's embedder opens the files: no export, no torch model.
    second = _embedder(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.ExportNotice)
        again = second.embed_texts(TEXTS)
        second.embed_pixels(_pixels(1))
    assert second.towers.torch is None
    assert (second.dim, second.preprocess) == (reference.dim, reference.preprocess)
    np.testing.assert_allclose(again, texts[: len(TEXTS)], atol=1e-6)


def test_the_rebuilt_tokenizer_gives_open_clips_tokens(cache, spec, reference):
    embedder = _embedder(spec)
    with pytest.warns(export.ExportNotice):
        embedder.embed_texts(["x"])
    tower = embedder.towers.opened[engines.TEXT, engines.ONNXRUNTIME]
    record = tower.record
    fast = tokenizer.FastTokenizer(
        tower.folder / tokenizer.FAST_TOKENIZER, record.context_length, record.fast_tokenizer
    )
    rng = np.random.default_rng(0)
    alphabet = [*"abcXYZ éüÅſß0129 .,;'!&-\t\n", "&amp;", "'s", "'ll", "ﬁ", "ǅ", "Ǆ"]
    texts = ["".join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(300)]
    np.testing.assert_array_equal(fast(texts), reference.tokenizer(texts).numpy())
    # Other scripts (where the two regex engines' Unicode tables differ) and a literal special
    # token are left to open_clip's tokenizer: the tower's tokens are open_clip's for all.
    others = ["東京 🐶 москва", "a <end_of_text> b", "\u0c5c\ua7ce it'\u0345"]
    for text in others:
        assert fast([text]) is None
    np.testing.assert_array_equal(tower.tokens(others), reference.tokenizer(others).numpy())


def test_a_damaged_tokenizer_file_falls_back_to_open_clips(cache, spec, reference):
    with pytest.warns(export.ExportNotice):
        _embedder(spec).embed_texts(["x"])
    path = next(cache.glob(f"*/{tokenizer.FAST_TOKENIZER}"))
    path.write_text(path.read_text().replace('"a</w>"', '"b</w>"', 1))
    again = _embedder(spec)
    got = again.embed_texts(TEXTS)
    assert float((got * reference.embed_texts(TEXTS)).sum(1).min()) >= 0.9999
    assert again.towers.opened[engines.TEXT, engines.ONNXRUNTIME].record.fast_tokenizer is None


@pytest.mark.parametrize("damage", ["bytes", "truncate", "record"])
def test_a_damaged_export_is_found_and_made_again(cache, spec, reference, damage):
    with pytest.warns(export.ExportNotice):
        _embedder(spec).embed_texts(["x"])
    folder = next(cache.glob("*/"))
    model, meta = folder / "text.onnx", folder / "text.json"
    if damage == "bytes":  # same size, other weights
        data = bytearray(model.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 4096] = bytes(4096)
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:1000])
    else:
        meta.write_text("{not json")
    with pytest.warns(export.ExportNotice):
        got = _embedder(spec).embed_texts(TEXTS)
    assert float((got * reference.embed_texts(TEXTS)).sum(1).min()) >= 0.9999


def test_a_tower_that_does_not_export_runs_in_torch(cache, spec, reference, monkeypatch):
    calls = []

    def refuse(embedder, tower, folder):
        calls.append(tower)
        raise ModelError("cannot export tiny-clip's image tower to ONNX: no")

    monkeypatch.setattr(towers, "export", refuse)
    embedder = _embedder(spec)
    with pytest.warns(UserWarning) as seen:
        got = embedder.embed_pixels(_pixels())
    assert any("no; running it in torch" in str(w.message) for w in seen)
    assert embedder.runtime == "torch"
    assert float((got * reference.embed_pixels(_pixels())).sum(1).min()) >= 0.9999
    # The next process does not try again (the failure is kept beside the model's files).
    with pytest.warns(UserWarning, match="no; running it in torch"):
        _embedder(spec).embed_pixels(_pixels(1))
    assert calls == ["image"]


def test_an_unwritable_cache_runs_in_torch(tmp_path, monkeypatch, spec, reference):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(blocker / "models"))
    embedder = _embedder(spec)
    with pytest.warns(UserWarning, match="cannot keep tiny-clip's exported text tower"):
        got = embedder.embed_texts(TEXTS)
    assert float((got * reference.embed_texts(TEXTS)).sum(1).min()) >= 0.9999


def test_int8_is_an_opt_in_image_tower_close_to_fp32(cache, spec, reference):
    embedder = _embedder(spec, "int8")
    assert embedder._engine == engines.ONNXRUNTIME and embedder.runtime == "onnxruntime"
    with pytest.warns(export.ExportNotice) as seen:
        got = embedder.embed_pixels(_pixels())
    assert any("quantising" in str(w.message) for w in seen)
    assert float((got * reference.embed_pixels(_pixels())).sum(1).min()) >= export.MIN_COSINE_INT8
    folder = next(cache.glob("*/"))
    record = json.loads((folder / "image-int8.json").read_text())
    assert record["cos_min"] >= export.MIN_COSINE_INT8
    assert (folder / "image-int8.onnx").stat().st_size < (folder / "image.onnx").stat().st_size
    # Texts stay fp32.
    with pytest.warns(export.ExportNotice):
        texts = embedder.embed_texts(TEXTS)
    assert float((texts * reference.embed_texts(TEXTS)).sum(1).min()) >= 0.9999


def test_a_text_query_imports_no_torch(cache, spec):
    with pytest.warns(export.ExportNotice):
        _embedder(spec).embed_texts(["x"])
    assert (
        _torch_imported_by(
            "vectors = OnnxEmbedder(spec, cpu('bf16', 'torch')).embed_texts(['a dog'])\n"
            "assert vectors.shape == (1, 32), vectors.shape\n"
        )
        == "[]"
    )


def _torch_imported_by(body: str) -> str:
    """Which of torch, open_clip and torchvision a fresh process running ``body`` (with
    ``spec`` the tiny model, ``np``, ``OnnxEmbedder`` and ``cpu(precision, runtime)``, a
    plan, at hand) imports."""
    script = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import numpy as np\n"
        "from organizer.choices import Device, Precision, Runtime\n"
        "from organizer.embed import request_spec\n"
        "from organizer.embed.onnx import OnnxEmbedder\n"
        "from organizer.embed.runtime import Plan\n"
        "def cpu(precision, runtime):\n"
        "    return Plan(Device.CPU, Precision(precision), Runtime(runtime), exported=True)\n"
        f"spec = request_spec({str(TINY_CONFIG)!r}, 'none')\n"
        f"{body}"
        "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- each plan loaded as it says ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "kind", "runs_images"),
    [
        (Plan(Device.CPU, Precision.FP32, Runtime.TORCH, False), "OpenClipEmbedder", "torch"),
        (_plan("fp32", Runtime.ONNX), "OnnxEmbedder", "onnxruntime"),
        (_plan("int8", Runtime.ONNX), "OnnxEmbedder", "onnxruntime"),
        (_plan("bf16", Runtime.OPENVINO), "OnnxEmbedder", "openvino"),
        (_plan("bf16", Runtime.TORCH), "OnnxEmbedder", "torch"),  # bf16 without OpenVINO
    ],
)
def test_a_plan_is_built_into_the_embedder_it_names(spec, chosen, kind, runs_images):
    with pytest.warns(RandomWeightsWarning):
        embedder = loader.build(spec, chosen)
    assert (type(embedder).__name__, embedder.device, embedder.precision) == (
        kind,
        "cpu",
        str(chosen.precision),
    )
    assert getattr(embedder, "runtime", "torch") == runs_images  # before any tower opens


def test_load_plans_from_this_machine(spec):
    """What this machine has decides: its plan, loaded (the plans: tests/test_runtime.py)."""
    from organizer.embed.runtime import plan

    here = Capabilities.probe()
    for options in (("cpu", "fp32", "torch"), ("cpu", "auto", "auto"), ("auto", "auto", "auto")):
        chosen = plan(*options, here)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            embedder = loader.load(spec, *options)
        assert (embedder.device, embedder.precision) == (chosen.device, chosen.precision)
        assert type(embedder).__name__ == (
            "OnnxEmbedder" if chosen.exported else "OpenClipEmbedder"
        )


@pytest.mark.parametrize(
    "args",
    [
        ["--runtime", "onnx", "--precision", "bf16"],
        ["--runtime", "torch", "--precision", "int8"],
        ["--device", "cuda", "--precision", "int8"],
        ["--runtime", "openvino", "--precision", "int8"],
        ["--runtime", "openvino", "--precision", "fp16"],
        ["--runtime", "openvino", "--device", "cuda"],
        ["--device", "cpu", "--precision", "fp16"],
    ],
)
def test_options_that_cannot_work_together_are_usage_errors(tmp_path, args):
    """Refused before a library is made, on any machine (the rules, machine by machine:
    tests/test_runtime.py)."""
    from typer.testing import CliRunner

    from organizer.cli import app

    result = CliRunner().invoke(app, ["-L", str(tmp_path / "l"), "ingest", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "l").exists()


def test_cli_rejects_an_unknown_runtime(tmp_path):
    from typer.testing import CliRunner

    from organizer.cli import app

    result = CliRunner().invoke(app, ["-L", str(tmp_path / "l"), "ingest", "--runtime", "tpu"])
    assert result.exit_code == 2
    assert "tpu" in result.output
    assert not (tmp_path / "l").exists()


def test_the_cache_folder_changes_with_what_writes_the_graph(monkeypatch, tmp_path):
    """An upgrade of torch, open_clip, timm, onnx or onnxscript exports again (a new folder);
    the same versions find the same folder."""
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(tmp_path))
    spec = ModelSpec("ViT-B-32-256", "none")
    first = model_cache.model_dir(spec)
    assert model_cache.model_dir(spec) == first
    for package in ("torch", "open_clip_torch", "timm", "onnx", "onnxscript"):
        real = model_cache.package_version
        monkeypatch.setattr(
            model_cache,
            "package_version",
            lambda p, real=real, package=package: "0.0-other" if p == package else real(p),
        )
        assert model_cache.model_dir(spec) != first, package
        monkeypatch.setattr(model_cache, "package_version", real)


# -- OpenVINO ------------------------------------------------------------------------------------


@needs_openvino
def test_openvino_runs_both_towers_close_to_torch_fp32(cache, spec, reference):
    """OpenVINO bf16 (fp32 on a CPU without bf16 units) runs the exported files: images, and
    many texts; a query stays in ONNX Runtime fp32. A second process opens them compiled."""
    first = _embedder(spec, "bf16", Runtime.OPENVINO)
    with pytest.warns(export.ExportNotice, match="image tower"):
        images = first.embed_pixels(_pixels())
    assert first.runtime == "openvino"
    floor = engines.MIN_COSINE_BF16
    assert float((images * reference.embed_pixels(_pixels())).sum(1).min()) >= floor
    many = TEXTS * 30  # more than one batch: OpenVINO
    with pytest.warns(export.ExportNotice, match="text tower"):
        texts = first.embed_texts(many)
    assert float((texts * reference.embed_texts(many)).sum(1).min()) >= floor
    assert (engines.TEXT, engines.OPENVINO) in first.towers.opened
    # Once OpenVINO runs texts, a smaller batch (naming's last) does too; a query does not.
    assert first._text_tower(5) is first.towers.opened[engines.TEXT, engines.OPENVINO]
    query = first.embed_texts(TEXTS[3:4])
    assert float((query * reference.embed_texts(TEXTS[3:4])).sum(1).min()) >= 0.9999
    assert first.towers.opened[engines.TEXT, engines.ONNXRUNTIME] is not None
    assert first.towers.torch is None or first.towers.torch.precision == "fp32"  # only to export
    assert any(next(cache.glob(f"*/{model_cache.OPENVINO_CACHE}")).iterdir())

    second = _embedder(spec, "bf16", Runtime.OPENVINO)
    with warnings.catch_warnings():
        warnings.simplefilter("error", export.ExportNotice)
        np.testing.assert_allclose(second.embed_pixels(_pixels()), images, atol=1e-5)
        second.embed_texts(many)
    assert second.towers.torch is None and second.runtime == "openvino"


@needs_openvino
def test_a_damaged_openvino_cache_is_compiled_again(cache, spec, reference):
    with pytest.warns(export.ExportNotice):
        _embedder(spec, "bf16", Runtime.OPENVINO).embed_pixels(_pixels(1))
    compiled = [
        p for p in next(cache.glob(f"*/{model_cache.OPENVINO_CACHE}")).iterdir() if p.is_file()
    ]
    assert compiled
    for path in compiled:
        path.chmod(0o644)
        path.write_bytes(b"\0" * 4096)
    again = _embedder(spec, "bf16", Runtime.OPENVINO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the damage is mended quietly
        got = again.embed_pixels(_pixels())
    assert again.runtime == "openvino"
    assert float((got * reference.embed_pixels(_pixels())).sum(1).min()) >= engines.MIN_COSINE_BF16
    assert not list(cache.glob("*/*.failed"))  # the copy's fault, not OpenVINO's
    # The damaged copy is not left behind (OpenVINO rewrites it, or organizer removes it).
    assert not any(path.exists() and path.read_bytes() == b"\0" * 4096 for path in compiled)
    third = _embedder(spec, "bf16", Runtime.OPENVINO)
    np.testing.assert_allclose(third.embed_pixels(_pixels()), got, atol=1e-5)
    assert any(next(cache.glob(f"*/{model_cache.OPENVINO_CACHE}")).iterdir())


@needs_openvino
def test_a_compiled_copy_that_fails_is_set_aside_not_blamed_on_openvino(
    cache, spec, reference, monkeypatch
):
    """A copy OpenVINO raises on (another user's, half written): compiled from the file
    alone, no failure recorded, the copy removed to be written afresh."""
    with pytest.warns(export.ExportNotice):
        _embedder(spec, "bf16", Runtime.OPENVINO).embed_pixels(_pixels(1))
    real, calls = engines.openvino_compiled, []

    def copy_fails(path, precision, cache=None):
        calls.append(cache is not None)
        if cache is not None:
            raise RuntimeError("Cache file is not visible after write")
        return real(path, precision, cache)

    monkeypatch.setattr(engines, "openvino_compiled", copy_fails)
    embedder = _embedder(spec, "bf16", Runtime.OPENVINO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = embedder.embed_pixels(_pixels())
    assert calls == [True, False] and embedder.runtime == "openvino"
    assert float((got * reference.embed_pixels(_pixels())).sum(1).min()) >= engines.MIN_COSINE_BF16
    assert not list(cache.glob("*/*.failed"))
    assert not list(cache.glob(f"*/{model_cache.OPENVINO_CACHE}"))


def test_what_openvino_cannot_run_runs_elsewhere_and_is_not_tried_again(
    cache, spec, reference, monkeypatch
):
    """Images go to torch, many texts to ONNX Runtime; the failure is kept beside the files,
    so the next process neither compiles again nor stays silent."""
    calls = []

    def broken(path, precision, cache=None):
        calls.append(path.name)
        raise RuntimeError("no kernel\nmore detail from src/inference")

    monkeypatch.setattr(engines, "openvino_compiled", broken)
    embedder = _embedder(spec, "bf16", Runtime.OPENVINO)
    with pytest.warns(UserWarning) as seen:
        images = embedder.embed_pixels(_pixels())
        texts = embedder.embed_texts(TEXTS * 30)
    said = [str(w.message) for w in seen]
    assert any("image tower in bf16: no kernel; running it in torch" in m for m in said)
    assert any("text tower in bf16: no kernel; running it in ONNX Runtime" in m for m in said)
    assert embedder.runtime == "torch"
    assert float((images * reference.embed_pixels(_pixels())).sum(1).min()) >= 0.999
    assert float((texts * reference.embed_texts(TEXTS * 30)).sum(1).min()) >= 0.9999
    assert sorted(set(calls)) == ["image.onnx", "text.onnx"]  # with its copy, then without
    assert len(list(cache.glob("*/*.failed"))) == 2
    tried = len(calls)

    with pytest.warns(UserWarning, match="no kernel; running it in torch"):
        _embedder(spec, "bf16", Runtime.OPENVINO).embed_pixels(_pixels(1))
    assert len(calls) == tried


def test_openvino_fp32_that_fails_falls_back_to_onnx_runtime(cache, spec, reference, monkeypatch):
    def broken(path, precision, cache=None):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(engines, "openvino_compiled", broken)
    embedder = _embedder(spec, "fp32", Runtime.OPENVINO)
    with pytest.warns(UserWarning, match="fp32: no kernel; running it in ONNX Runtime"):
        got = embedder.embed_pixels(_pixels())
    assert embedder.runtime == "onnxruntime"  # the checked fp32 file, not torch
    assert (
        embedder.towers.torch is None or embedder.towers.torch.precision == "fp32"
    )  # only to export
    assert float((got * reference.embed_pixels(_pixels())).sum(1).min()) >= 0.9999


@needs_openvino
def test_a_query_and_an_ingest_in_openvino_import_no_torch(cache, spec):
    with pytest.warns(export.ExportNotice):
        first = _embedder(spec, "bf16", Runtime.OPENVINO)
        first.embed_pixels(_pixels(1))
        first.embed_texts(TEXTS * 30)
        first.embed_texts(["x"])
    assert (
        _torch_imported_by(
            "e = OnnxEmbedder(spec, cpu('bf16', 'openvino'))\n"
            "assert e.embed_pixels(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 32)\n"
            "assert e.embed_texts(['a dog'] * 100).shape == (100, 32)\n"
            "assert e.embed_texts(['a dog']).shape == (1, 32)\n"
        )
        == "[]"
    )
