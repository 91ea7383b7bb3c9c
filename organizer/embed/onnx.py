"""open_clip's towers run by ONNX Runtime: exported once per model, checked, cached.

Why: on a CPU without bf16 matrix units (AVX2-only), ONNX Runtime's fp32 kernels run the
image tower faster than torch's fp32 (bench/ingest.py), which is what such a CPU must use;
and a text query needs only the text tower, which ONNX Runtime opens in about half a second
with no model to build (``search`` does not wait for torch to build the whole model).

Each tower is exported from the torch model (``torch.onnx.export`` with the dynamo exporter:
the text tower's length axis stays dynamic, so a batch runs only up to its longest prompt),
then run on a probe beside torch: the export is kept only if every probe vector has a cosine
≥ :data:`MIN_COSINE` to torch's fp32. The probe's vectors are stored with the file and run
again each time the file is opened, so a damaged or stale file is found, removed and exported
again instead of giving wrong vectors. A model that does not export falls back to torch.

Files live in the per-user cache (``ORGANIZER_MODEL_CACHE`` overrides it), one folder per
model identity (name, config, weights and their hash, and the torch and open_clip versions
that built and exported it): libraries with the same model share them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import platformdirs

from organizer.embed import random_weights_warning
from organizer.embed.runtime import usable_cores
from organizer.errors import ModelError
from organizer.imaging import PreprocessSpec

if TYPE_CHECKING:
    from organizer.embed import ModelSpec

FORMAT = 2  # bump when the exported graphs or their records change: older folders are ignored
MIN_COSINE = 0.9999  # fp32 against fp32: a right export gives 0.99999+
# int8 weights against fp32 (random weights give 0.9998; real CLIP weights have outlier
# activations random ones lack, so this is a floor, not a promise: int8 is opt-in)
MIN_COSINE_INT8 = 0.99
MIN_COSINE_BF16 = 0.999  # bf16 against fp32: the floor for what --precision auto picks
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"  # what runs an exported tower
OPENVINO_CACHE = "openvino-cache"  # OpenVINO's compiled towers, beside the files
IMAGE, TEXT, IMAGE_INT8 = "image", "text", "image-int8"
PROBE_TEXTS = ("a photo of a dog.", "", "a photo of a small red car by the sea at night.")
_PROBE_IMAGES = 2


def cache_root() -> Path:
    override = os.environ.get("ORGANIZER_MODEL_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    return platformdirs.user_cache_path("organizer", appauthor=False) / "models"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def model_dir(spec: ModelSpec) -> Path:
    """The folder of ``spec``'s exported towers. Only a spec whose weights are pinned (random,
    or with their hash) may be looked up: a tag's file could change under the same name."""
    identity = {
        "format": FORMAT,
        "name": spec.name,
        "config": spec.config_json,
        "pretrained": spec.pretrained,
        "sha256": spec.weights_sha256,
        # What builds the model and writes the graph. onnxruntime is not here: each open
        # reruns the probe under the installed one.
        "torch": _version("torch"),
        "open_clip": _version("open_clip_torch"),
        "timm": _version("timm"),
        "onnx": _version("onnx"),
        "onnxscript": _version("onnxscript"),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)
    return cache_root() / f"{safe}-{key}"


def pinned(spec: ModelSpec) -> bool:
    """Whether ``spec`` names exactly one set of weights without reading them."""
    return spec.is_random or spec.weights_sha256 is not None


@dataclass(frozen=True)
class TowerRecord:
    """What is kept beside an exported tower: enough to use it without torch."""

    tower: str
    size: int  # bytes of the .onnx file
    sha256: str  # of the .onnx file: a damaged weight the probe does not use is found too
    dim: int
    preprocess: dict  # PreprocessSpec's fields
    context_length: int | None  # text tower: the tokenizer's
    fast_tokenizer: str | None  # text tower: SHA-256 of text-tokenizer.json, if it is exact
    probe: list[list[float]]  # the vectors this file gave for the probe input when made
    cos_min: float  # those against torch fp32's
    export_s: float


def _probe_pixels(preprocess: PreprocessSpec) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (_PROBE_IMAGES, *preprocess.size, 3), dtype=np.uint8)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


class EngineFailed(Exception):
    """A sound tower file that an engine other than ONNX Runtime cannot run right."""


class Tower:
    """One exported tower, run by ONNX Runtime or OpenVINO."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], record: TowerRecord, folder: Path):
        self.run = run
        self.record = record
        self.folder = folder
        self._fast: FastTokenizer | None = None

    @classmethod
    def open(
        cls, folder: Path, tower: str, engine: str = ONNXRUNTIME, precision: str = "fp32"
    ) -> Tower | None:
        """The tower if its files are there and still give the probe's vectors, else None
        (the caller exports again, replacing them under the folder's lock).

        Raises:
            EngineFailed: the file is sound (its checksum) but OpenVINO does not give the
                probe's vectors with it: exporting again would not help.
        """
        path, meta = folder / f"{tower}.onnx", folder / f"{tower}.json"
        try:
            record = TowerRecord(**json.loads(meta.read_text()))
            if path.stat().st_size != record.size:
                raise ValueError("size")
            with open(path, "rb") as fh:  # streamed: a tower is hundreds of MB
                if hashlib.file_digest(fh, "sha256").hexdigest() != record.sha256:
                    raise ValueError("checksum")
            if engine == ONNXRUNTIME:
                found = cls(_session(path), record, folder)
                got = found.run(found.probe_input())
                if float(_cosines(got, np.asarray(record.probe)).min()) < MIN_COSINE:
                    raise ValueError("probe")
                return found
        except Exception:  # absent, or damaged in one of many ways: export it again
            return None
        cache = folder / OPENVINO_CACHE
        if not os.access(cache if cache.exists() else folder, os.W_OK):
            cache = None  # another user's, or read-only: compiled in memory each time
        try:
            return cls._in_openvino(path, record, folder, precision, cache)
        except EngineFailed:
            if cache is None:
                raise
        # The compiled copy failed (damaged, half written by another process, not writable):
        # from the file alone, which alone says whether OpenVINO can run the tower. If it
        # can, the copy goes, to be written afresh next time (a process that mapped it keeps
        # its pages).
        found = cls._in_openvino(path, record, folder, precision, None)
        shutil.rmtree(cache, ignore_errors=True)
        return found

    @classmethod
    def _in_openvino(
        cls, path: Path, record: TowerRecord, folder: Path, precision: str, cache: Path | None
    ) -> Tower:
        try:
            found = cls(_openvino(path, precision, cache), record, folder)
            got = found.run(found.probe_input())
            cos_min = float(_cosines(got, np.asarray(record.probe)).min())
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise EngineFailed(reason) from None
        floor = MIN_COSINE_BF16 if precision == "bf16" else MIN_COSINE
        if not cos_min >= floor:  # NaN too
            raise EngineFailed(f"its vectors differ from ONNX Runtime's (cosine {cos_min:.6f})")
        return found

    def probe_input(self) -> np.ndarray:
        if self.record.tower in (IMAGE, IMAGE_INT8):
            return _probe_pixels(PreprocessSpec.from_dict(self.record.preprocess))
        return self.tokenize(list(PROBE_TEXTS))

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Token rows (int64, padded with 0) cut after the longest prompt's end token."""
        tokens = self.tokens(texts)
        return tokens[:, : int(tokens.argmax(axis=1).max()) + 1]

    def tokens(self, texts: list[str]) -> np.ndarray:
        """Token rows of the tokenizer's context length (int64, padded with 0)."""
        if self.record.fast_tokenizer and self._fast is None:
            try:
                self._fast = FastTokenizer(
                    self.folder / FAST_TOKENIZER,
                    self.record.context_length,
                    self.record.fast_tokenizer,
                )
            except Exception:  # absent or damaged: open_clip's tokenizer does the same
                self.record = replace(self.record, fast_tokenizer=None)
        tokens = self._fast(texts) if self._fast is not None else None
        if tokens is not None:
            return tokens
        return clip_tokenizer(self.record.context_length)(texts).numpy()


def _session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A model file run by ONNX Runtime on the CPU (thread-safe)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: organizer reports itself
    # ONNX Runtime sizes its pool from the machine's cores, not the ones this process may use
    # (taskset, a container's cpuset): more threads than cores would fight over them.
    options.intra_op_num_threads = usable_cores()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _openvino(
    path: Path, precision: str, cache: Path | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A model file compiled by OpenVINO for the CPU, in bf16 (its matrix units: AMX,
    AVX512-BF16) or fp32. With ``cache``, OpenVINO keeps the compiled model there and maps
    it the next time: it opens in 0.2 s instead of 1.7 s, and its weights are file pages,
    not 350 MB more of the process's own memory (ViT-B-32-256's image tower).

    Calls are serialised: one request runs on all the cores (the latency hint), so requests
    side by side would only share them, each with its own hundreds of MB of activations."""
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": usable_cores(),  # as ONNX Runtime: this process's cores
        "PERFORMANCE_HINT": "LATENCY",
    }
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    lock = threading.Lock()

    def run(x: np.ndarray) -> np.ndarray:
        with lock:
            return np.array(request.infer({0: x})[0])  # a copy: the request reuses its buffer

    return run


FAST_TOKENIZER = "text-tokenizer.json"
_SOT, _EOT = "<start_of_text>", "<end_of_text>"


# Where the `regex` module (open_clip) and Oniguruma (tokenizers) agree on which characters
# are letters and digits: they follow different Unicode versions past the Latin blocks.
_FAST_MAX_CODEPOINT = 0x24F


class FastTokenizer:
    """open_clip's CLIP BPE tokenizer rebuilt in Hugging Face ``tokenizers`` (no torch; the
    export checks it gives open_clip's tokens, every Latin character included). Texts it
    might split otherwise (other scripts, a literal special token) are left to open_clip's."""

    def __init__(self, path: Path, context_length: int | None, sha256: str | None = None):
        from tokenizers import Tokenizer

        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{path} is damaged")
        self._tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        self._context = context_length or 77
        self._sot = self._tokenizer.token_to_id(_SOT)
        self._eot = self._tokenizer.token_to_id(_EOT)

    def __call__(self, texts: list[str]) -> np.ndarray | None:
        cleaned = [_clean(text) for text in texts]
        if any(_SOT in text or _EOT in text for text in cleaned):
            return None
        if any(max(map(ord, text), default=0) > _FAST_MAX_CODEPOINT for text in cleaned):
            return None
        rows = np.zeros((len(texts), self._context), dtype=np.int64)
        for i, encoding in enumerate(self._tokenizer.encode_batch(cleaned)):
            ids = [self._sot, *encoding.ids[: self._context - 2], self._eot]
            rows[i, : len(ids)] = ids
        return rows


def _clean(text: str) -> str:
    """open_clip's default text cleaning: ftfy, HTML entities, whitespace, lower case."""
    import html

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def _build_fast_tokenizer(tokenizer: Any, path: Path, probe: list[str]) -> str | None:
    """Write ``tokenizer`` (open_clip's SimpleTokenizer) as a ``tokenizers`` file and keep it
    only if it gives the same tokens for every probe text; its SHA-256 (None: not kept)."""
    try:
        return _try_fast_tokenizer(tokenizer, path, probe)
    except Exception:  # another tokenizer layout: open_clip's own then (it imports torch)
        return None


def _try_fast_tokenizer(tokenizer: Any, path: Path, probe: list[str]) -> str | None:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    ranks = sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])
    model = models.BPE(
        vocab=dict(tokenizer.encoder), merges=[pair for pair, _ in ranks], end_of_word_suffix="</w>"
    )
    fast = Tokenizer(model)
    pattern = "(?i)" + tokenizer.pat.pattern.replace(f"{_SOT}|{_EOT}|", "")  # open_clip's flag
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    fast.add_special_tokens([_SOT, _EOT])
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        fast.save(tmp)
        rebuilt = FastTokenizer(Path(tmp), tokenizer.context_length)
        covered = [text for text in probe if rebuilt([text]) is not None]  # the rest: open_clip
        if not np.array_equal(rebuilt(covered), tokenizer(covered).numpy()):
            return None
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return digest
    finally:
        Path(tmp).unlink(missing_ok=True)


def _tokenizer_probe() -> list[str]:
    """Texts the rebuilt tokenizer must split as open_clip does: the probe, every line of the
    naming vocabulary, and the hard cases (case, spacing, entities, accents, scripts, emoji,
    digits, contractions, a text longer than the context)."""
    from organizer.resources import vocabulary_path

    hard = [
        "Café  DÉJÀ vu\tOK\n",
        "東京タワー 서울 москва عربى",
        "🐶🐱 dog&amp;cat &lt;b&gt; rock'n'roll it's I'M we'll they'd",
        "ﬁne ＦＵＬＬ width 12345 3.14 1,000,000 #hashtag @user",
        "a photo of " + "a very long caption " * 30,
    ]
    latin = [
        chr(c)
        for c in range(0x20, _FAST_MAX_CODEPOINT + 1)
        if chr(c).isprintable() and not chr(c).isspace()
    ]
    every_latin = [f"{c} a{c}b {c}{c}9 it'{c}" for c in latin]
    lines = vocabulary_path().read_text(encoding="utf-8").splitlines()
    return [*PROBE_TEXTS, *hard, *every_latin, *(line for line in lines if line.strip())]


_TOKENIZERS: dict[int | None, Any] = {}


def clip_tokenizer(context_length: int | None) -> Any:
    """open_clip's CLIP BPE tokenizer, loaded from its module alone: ``import open_clip`` would
    also import torchvision and every model (about 2 s a text query does not need)."""
    if context_length not in _TOKENIZERS:
        try:
            found = importlib.util.find_spec("open_clip")
            path = Path(next(iter(found.submodule_search_locations))) / "tokenizer.py"
            spec = importlib.util.spec_from_file_location("organizer_open_clip_tokenizer", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            make = module.SimpleTokenizer
        except Exception:  # another layout of open_clip: the usual, slower import
            from open_clip.tokenizer import SimpleTokenizer as make
        kwargs = {"context_length": context_length} if context_length else {}
        _TOKENIZERS[context_length] = make(**kwargs)
    return _TOKENIZERS[context_length]


# -- export (needs torch and the model) -------------------------------------------------------


def exportable_text(embedder: Any) -> bool:
    """Whether the text tower can run cut to its longest prompt from open_clip's CLIP BPE
    tokenizer: the classic CLIP tower (see ``openclip._pooled_length``)."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    from organizer.embed.openclip import _pooled_length

    tokenizer = embedder.tokenizer
    if not isinstance(tokenizer, SimpleTokenizer):
        return False
    if tokenizer.clean_fn is not _clean_lower or tokenizer.reduction_fn is not None:
        return False  # the rebuilt tokenizer and the probe know the default only
    if len(tokenizer.all_special_ids) != 2:
        return False
    if getattr(embedder.model, "text_pool_type", None) != "argmax":  # pooled at the top id
        return False
    return _pooled_length(embedder.model, embedder.tokenizer(["x"])) is not None


def export(embedder: Any, tower: str, folder: Path) -> Tower:
    """Export ``tower`` of a loaded fp32 torch embedder into ``folder`` and check it.

    Raises:
        ModelError: the model does not export, or the export does not give torch's vectors.
    """
    import torch

    from organizer.embed.openclip import OpenClipEmbedder

    assert isinstance(embedder, OpenClipEmbedder) and embedder.precision == "fp32"
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    module, example, dynamic = _wrapper(embedder, tower)
    with _scratch(folder, tower) as tmp:
        try:
            fastpath = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel has no ONNX form
            try:
                with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet():
                    torch.onnx.export(
                        module,
                        (example,),
                        str(tmp),
                        input_names=["input"],
                        output_names=["output"],
                        dynamic_shapes=(dynamic,),
                        opset_version=18,
                        dynamo=True,
                        external_data=False,
                    )
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
        except Exception as exc:  # the exporter raises many types for a graph it cannot write
            raise ModelError(
                f"cannot export {embedder.spec.describe()}'s {tower} tower to ONNX: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            ) from None
        probe = _probe_pixels(embedder.preprocess) if tower == IMAGE else list(PROBE_TEXTS)
        want = embedder.embed_pixels(probe) if tower == IMAGE else embedder.embed_texts(probe)
        fast = (
            None
            if tower != TEXT
            else _build_fast_tokenizer(
                embedder.tokenizer, folder / FAST_TOKENIZER, _tokenizer_probe()
            )
        )
        shape = {
            "dim": int(embedder.dim),
            "preprocess": asdict(embedder.preprocess),
            "context_length": getattr(embedder.tokenizer, "context_length", None),
            "fast_tokenizer": fast,
        }
        what = f"the ONNX export of {embedder.spec.describe()}'s {tower} tower"
        return _keep(tmp, folder, tower, shape, want, MIN_COSINE, what, started)


def quantize(image: Tower) -> Tower:
    """The fp32 image tower with int8 weights (ONNX Runtime's dynamic quantisation), kept if
    its probe vectors stay within :data:`MIN_COSINE_INT8` of the fp32 ones.

    Raises:
        ModelError: it cannot be quantised, or the vectors drift too far.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    with _scratch(image.folder, IMAGE_INT8) as tmp:
        try:
            with _quiet():
                quantize_dynamic(image.folder / f"{IMAGE}.onnx", tmp, weight_type=QuantType.QInt8)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ModelError(f"cannot quantise the image tower to int8: {reason}") from None
        shape = {k: getattr(image.record, k) for k in ("dim", "preprocess", "context_length")}
        want = np.asarray(image.record.probe, dtype=np.float32)
        what = "the int8 image tower"
        return _keep(
            tmp,
            image.folder,
            IMAGE_INT8,
            {**shape, "fast_tokenizer": None},
            want,
            MIN_COSINE_INT8,
            what,
            started,
        )


@contextlib.contextmanager
def _scratch(folder: Path, tower: str):
    """A temporary file in ``folder``, removed unless it was kept (renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{tower}-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _keep(
    tmp: Path,
    folder: Path,
    tower: str,
    shape: dict,
    want: np.ndarray,
    min_cosine: float,
    what: str,
    started: float,
) -> Tower:
    """Run the new file on the probe; keep it as ``tower`` if it gives ``want`` (cosine ≥
    ``min_cosine``), with a record of what it gave."""
    with open(tmp, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    try:
        run = _session(tmp)
    except Exception as exc:
        raise ModelError(f"{what} does not load in ONNX Runtime: {exc}") from None
    record = TowerRecord(
        tower=tower,
        size=tmp.stat().st_size,
        sha256=digest,
        probe=[],  # filled next
        cos_min=0.0,
        export_s=0.0,
        **shape,
    )
    made = Tower(run, record, folder)
    got = made.run(made.probe_input())
    cos_min = float(_cosines(got, want).min())
    if cos_min < min_cosine:
        raise ModelError(
            f"{what} does not give torch's vectors (cosine {cos_min:.6f} < {min_cosine})"
        )
    made.record = replace(
        record,
        probe=got.astype(float).tolist(),
        cos_min=cos_min,
        export_s=time.perf_counter() - started,
    )
    os.chmod(tmp, 0o644)  # a cache shared through ORGANIZER_MODEL_CACHE is read by others
    os.replace(tmp, folder / f"{tower}.onnx")
    write_atomic(folder / f"{tower}.json", json.dumps(asdict(made.record)))
    return made


@contextlib.contextmanager
def folder_lock(folder: Path):
    """One exporter at a time per model folder, across processes."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sweep(folder: Path, older_than_s: float = 3600) -> None:
    """Remove scratch files a killed exporter left (hidden files, but the lock)."""
    for leftover in folder.glob(".*"):
        try:
            if leftover.name != ".lock" and time.time() - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
        except OSError:
            pass


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (a cache file: readable by all)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet():
    import logging
    import warnings

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _wrapper(embedder: Any, tower: str) -> tuple[Any, Any, dict]:
    """The tower as a module from its raw input to unit vectors, an example input, and the
    input's dynamic axes. The image tower takes uint8 (N, H, W, 3) pixels, so normalising
    happens in the graph; the text tower int64 tokens of any length up to the context."""
    import torch

    from organizer.embed.openclip import _encode_text

    model = embedder.model
    batch = torch.export.Dim("batch", min=1, max=65536)
    if tower == IMAGE:
        mean, std = embedder._mean, embedder._std

        class ImageTower(torch.nn.Module):
            def forward(self, pixels):
                x = (pixels.permute(0, 3, 1, 2).float() - mean) / std
                return torch.nn.functional.normalize(model.encode_image(x), dim=-1)

        example = torch.zeros((2, *embedder.preprocess.size, 3), dtype=torch.uint8)
        return ImageTower().eval(), example, {0: batch}

    class TextTower(torch.nn.Module):
        def forward(self, tokens):
            return torch.nn.functional.normalize(_encode_text(model, tokens), dim=-1)

    context = int(model.positional_embedding.shape[0])
    length = torch.export.Dim("length", min=2, max=context)
    example = embedder.tokenizer(["a photo of a dog.", "x"])[:, : min(8, context)]
    return TextTower().eval(), example, {0: batch, 1: length}


# -- the embedder -----------------------------------------------------------------------------


class ExportNotice(UserWarning):
    """A tower is being exported: a one-time wait of seconds, said so the user knows why."""


_TEXT_BATCH = 64


class OnnxEmbedder:
    """The embedder on a CPU, running exported towers: fp32 (and int8) in ONNX Runtime, bf16
    in OpenVINO, whose bf16 kernels use the CPU's bf16 units and open in a fraction of a
    second (torch's import and model build take seconds).

    - Images run in the engine given (None: torch, for bf16 without OpenVINO).
    - A few texts (a query) run in ONNX Runtime fp32: exact, and open in half a second.
    - Many texts (cluster names) run in OpenVINO where it runs the images; in torch bf16
      where torch does (twice ONNX Runtime's fp32 speed on such a CPU); else ONNX Runtime.

    A tower that cannot be exported, or that OpenVINO cannot run, runs in torch (texts in
    ONNX Runtime then), with a warning. The torch model is built only then, or to export a
    tower (once per model and machine)."""

    device = "cpu"

    def __init__(self, spec: ModelSpec, precision: str, engine: str | None, offline: bool = False):
        self._spec = spec
        self.precision = precision
        self._engine = engine  # what runs the image tower; None: torch
        self._offline = offline
        self._towers: dict[tuple[str, str], Tower | None] = {}
        self._torch: Any = None  # the torch embedder at self.precision, when one runs
        self._lock = threading.RLock()
        if spec.is_random:
            random_weights_warning(spec, stacklevel=4)

    @property
    def _image(self) -> str:
        return IMAGE_INT8 if self.precision == "int8" else IMAGE

    @property
    def runtime(self) -> str:
        """What runs the images: "onnxruntime", "openvino" or "torch" (before the first
        batch: what is meant to)."""
        if self._engine is None:
            return "torch"
        if self._towers.get((self._image, self._engine), 1) is not None:
            return self._engine
        if self._towers.get((IMAGE, ONNXRUNTIME)) is not None:
            return ONNXRUNTIME  # OpenVINO fp32 failed: ONNX Runtime's fp32 instead
        return "torch"

    @property
    def spec(self) -> ModelSpec:
        return self._spec  # with a tag's checkpoint hash once a tower or torch model is open

    @property
    def dim(self) -> int:
        return self._shape_source().dim

    @property
    def preprocess(self) -> PreprocessSpec:
        source = self._shape_source()
        if isinstance(source, TowerRecord):
            return PreprocessSpec.from_dict(source.preprocess)
        return source.preprocess

    def _shape_source(self) -> Any:
        with self._lock:  # organizer serve's warm-up may be adding a tower
            opened = [tower for tower in self._towers.values() if tower is not None]
        if opened:
            return opened[0].record
        if self._torch is None and self._engine is not None:
            tower = self._tower(self._image, self._engine)
            if tower is not None:
                return tower.record
        return self._torch_embedder()

    def _torch_embedder(self) -> Any:
        with self._lock:
            if self._torch is None:
                precision = "fp32" if self.precision == "int8" else self.precision
                self._torch = self._load_torch(precision)
            return self._torch

    def _load_torch(self, precision: str) -> Any:
        from organizer.embed import openclip

        with _quiet():  # its random-weights warning was given already
            loaded = openclip.load(self._spec, "cpu", precision, self._offline)
        self._spec = loaded.spec  # a tag's checkpoint hash is known now
        return loaded

    def _tower(self, name: str, engine: str = ONNXRUNTIME) -> Tower | None:
        """The tower ``name`` in ``engine``, or None: it runs in torch."""
        with self._lock:  # one export at a time (organizer serve answers in threads)
            if (name, engine) not in self._towers:
                self._towers[name, engine] = self._find(name, engine)
            return self._towers[name, engine]

    def _find(self, name: str, engine: str) -> Tower | None:
        if not pinned(self._spec) and not self._spec.is_checkpoint_path:
            from organizer.embed import remembered

            # A tag: the file it names now, found and hashed without torch when known here,
            # kept if towers were exported from that file; else torch settles the hash.
            guess = remembered.pinned_tag(self._spec)
            if guess is not None and (model_dir(guess) / f"{name}.json").is_file():
                self._spec = guess
        folder = model_dir(self._spec) if pinned(self._spec) else None
        if engine == OPENVINO and folder is not None and self._openvino_failed(folder, name):
            return None
        try:
            found = Tower.open(folder, name, engine, self.precision) if folder else None
            if found is None:
                found = self._quantized() if name == IMAGE_INT8 else self._export(name)
                if found is not None and engine == OPENVINO:  # the spec is pinned now
                    if self._openvino_failed(found.folder, name):
                        return None
                    found = Tower.open(found.folder, name, engine, self.precision)
            return found
        except EngineFailed as exc:
            self._openvino_failed(model_dir(self._spec), name, str(exc))
            return None

    def _openvino_failed(self, folder: Path, name: str, reason: str | None = None) -> bool:
        """Whether OpenVINO failed on this tower (with this version of it), saying so; with
        ``reason``, record that it did, so that later runs do not compile it again."""
        import warnings

        marker = folder / f"{name}.openvino-{_version('openvino')}-{self.precision}.failed"
        if reason is not None:
            reason = (
                f"OpenVINO cannot run {self._spec.name}'s {name} tower in {self.precision}: "
                f"{reason}"
            )
            with contextlib.suppress(OSError):  # a read-only cache: tried again next time
                write_atomic(marker, reason)
        else:
            with contextlib.suppress(OSError):  # none (or an unreadable cache: opening says)
                reason = marker.read_text().strip()
        if reason is None:
            return False
        instead = "ONNX Runtime" if name == TEXT or self.precision == "fp32" else "torch"
        warnings.warn(f"{reason}; running it in {instead}", stacklevel=6)
        return True

    def _quantized(self) -> Tower:
        import warnings

        image = self._tower(IMAGE)
        if image is None:
            raise ModelError(
                f"--precision int8 needs {self._spec.name}'s image tower in ONNX Runtime, "
                "which did not export: use --precision fp32"
            )
        try:
            with folder_lock(image.folder):
                found = Tower.open(image.folder, IMAGE_INT8)
                if found is not None:
                    return found
                warnings.warn(
                    f"quantising {self._spec.name}'s image tower to int8 (once per model on "
                    "this machine)",
                    ExportNotice,
                    stacklevel=5,
                )
                return quantize(image)
        except OSError as exc:
            raise ModelError(
                f"cannot keep the int8 image tower in {image.folder}: {exc.strerror or exc}"
            ) from None

    def _export(self, name: str) -> Tower | None:
        """Export ``name`` from the fp32 torch model (built for this only and let go after,
        unless it already runs), or None: it runs in torch, with a warning saying why."""
        import warnings

        have = self._torch is not None and self._torch.precision == "fp32"
        fp32 = self._torch if have else self._load_torch("fp32")
        folder = model_dir(self._spec)
        failed = folder / f"{name}.failed"
        try:
            with folder_lock(folder):
                found = Tower.open(folder, name)  # another process may have exported it
                if found is not None:
                    return found
                if name == TEXT and not exportable_text(fp32):
                    return None
                if failed.is_file():  # tried once on this machine: not every run again
                    warnings.warn(
                        f"{failed.read_text().strip()}; running it in torch", stacklevel=5
                    )
                    return None
                _sweep(folder)
                warnings.warn(
                    f"exporting {self._spec.name}'s {name} tower to ONNX (once per "
                    "model on this machine)",
                    ExportNotice,
                    stacklevel=5,
                )
                try:
                    return export(fp32, name, folder)
                except ModelError as exc:
                    write_atomic(failed, str(exc))
                    warnings.warn(f"{exc}; running it in torch", stacklevel=5)
                    return None
        except OSError as exc:
            warnings.warn(
                f"cannot keep {self._spec.name}'s exported {name} tower in {folder} "
                f"({exc.strerror or exc}); running it in torch",
                stacklevel=5,
            )
            return None

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        tower = self._image_tower()
        if tower is None:
            return self._torch_embedder().embed_pixels(batch)
        return tower.run(np.ascontiguousarray(batch, dtype=np.uint8))

    def _image_tower(self) -> Tower | None:
        if self._engine is None:
            return None
        tower = self._tower(self._image, self._engine)
        if tower is None and self._engine == OPENVINO and self.precision == "fp32":
            tower = self._tower(IMAGE)  # the same fp32, checked against torch already
        return tower

    def _text_tower(self, count: int) -> Tower | None:
        """The tower that runs ``count`` texts (see the class), or None: torch. Once a bulk
        engine runs texts, it runs every batch of more than one (cluster naming's last,
        smaller batch too): one vocabulary is never embedded by two engines."""
        bulk = count > _TEXT_BATCH or (
            count > 1
            and (
                self._towers.get((TEXT, OPENVINO)) is not None
                or (self._torch is not None and self._torch.precision == "bf16")
            )
        )
        if bulk and self._engine == OPENVINO:
            return self._tower(TEXT, OPENVINO) or self._tower(TEXT)
        if bulk and self._engine is None and self.precision == "bf16":
            return None
        return self._tower(TEXT)

    def prepare_texts(self, count: int) -> None:
        """Import now the libraries :meth:`embed_texts` of ``count`` texts will run on, and
        open (the first time on a machine: export) the text tower, so that a caller can
        schedule that work (seconds of Python holding the GIL)."""
        if self._text_tower(count) is None:
            import open_clip  # noqa: F401 (torch with it)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> unit vectors, in batches of similar length, each cut after its longest
        prompt's end token."""
        tower = self._text_tower(len(texts))
        if tower is None:
            return self._torch_embedder().embed_texts(texts)
        out = np.zeros((len(texts), tower.record.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = tower.tokens(texts)
        lengths = tokens.argmax(axis=1) + 1
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), _TEXT_BATCH):
            rows = order[start : start + _TEXT_BATCH]
            out[rows] = tower.run(tokens[rows, : int(lengths[rows].max())])
        return out
