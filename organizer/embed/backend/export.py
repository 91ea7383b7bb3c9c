"""Making a tower file: the torch model's towers exported to ONNX, the image tower quantised
to int8 weights, each kept only if it gives the probe's vectors (needs torch and the model).

Each tower is exported from the torch model (``torch.onnx.export`` with the dynamo exporter:
the text tower's length axis stays dynamic, so a batch runs only up to its longest prompt),
then run on a probe beside torch: the export is kept only if every probe vector has a cosine
≥ :data:`~organizer.embed.backend.engines.MIN_COSINE` to torch's fp32. The probe's vectors
are stored with the file and run again each time the file is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from organizer.atomic import move_over
from organizer.embed.backend.cache import scratch, write_atomic
from organizer.embed.backend.engines import (
    IMAGE,
    IMAGE_INT8,
    MIN_COSINE,
    TEXT,
    Tower,
    TowerRecord,
    cosines,
    onnxruntime_session,
    probe_pixels,
)
from organizer.embed.backend.tokenizer import (
    FAST_TOKENIZER,
    PROBE_TEXTS,
    build_fast_tokenizer,
    tokenizer_probe,
)
from organizer.errors import ModelError

# int8 weights against fp32 (random weights give 0.9998; real CLIP weights have outlier
# activations random ones lack, so this is a floor, not a promise: int8 is opt-in)
MIN_COSINE_INT8 = 0.99


class ExportNotice(UserWarning):
    """A tower is being exported: a one-time wait of seconds, said so the user knows why."""


def exportable_text(embedder: Any) -> bool:
    """Whether the text tower can run cut to its longest prompt from open_clip's CLIP BPE
    tokenizer: the classic CLIP tower (see :func:`organizer.embed.openclip.pooled_length`)."""
    from open_clip.tokenizer import SimpleTokenizer, _clean_lower

    from organizer.embed.openclip import pooled_length

    tokenizer = embedder.tokenizer
    if not isinstance(tokenizer, SimpleTokenizer):
        return False
    if tokenizer.clean_fn is not _clean_lower or tokenizer.reduction_fn is not None:
        return False  # the rebuilt tokenizer and the probe know the default only
    if len(tokenizer.all_special_ids) != 2:
        return False
    if getattr(embedder.model, "text_pool_type", None) != "argmax":  # pooled at the top id
        return False
    return pooled_length(embedder.model, embedder.tokenizer(["x"])) is not None


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
    with scratch(folder, tower) as tmp:
        try:
            fastpath = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel has no ONNX form
            try:
                with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), quiet():
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
        if tower == IMAGE:
            want = embedder.embed_pixels(probe_pixels(embedder.preprocess))
        else:
            want = embedder.embed_texts(list(PROBE_TEXTS))
        fast = (
            None
            if tower != TEXT
            else build_fast_tokenizer(
                embedder.tokenizer, folder / FAST_TOKENIZER, tokenizer_probe()
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
    with scratch(image.folder, IMAGE_INT8) as tmp:
        try:
            with quiet():
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
        run = onnxruntime_session(tmp)
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
    cos_min = float(cosines(got, want).min())
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
    move_over(tmp, folder / f"{tower}.onnx")
    write_atomic(folder / f"{tower}.json", json.dumps(asdict(made.record)))
    return made


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the logging and warnings of the libraries an export and a model build run
    (torch's exporter, open_clip): organizer says what matters itself."""
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

    from organizer.embed.openclip import encode_text

    model = embedder.model
    batch = torch.export.Dim("batch", min=1, max=65536)
    if tower == IMAGE:
        mean, std = embedder.pixel_mean, embedder.pixel_std

        class ImageTower(torch.nn.Module):
            def forward(self, pixels: torch.Tensor) -> torch.Tensor:
                x = (pixels.permute(0, 3, 1, 2).float() - mean) / std
                return torch.nn.functional.normalize(model.encode_image(x), dim=-1)

        example = torch.zeros((2, *embedder.preprocess.size, 3), dtype=torch.uint8)
        return ImageTower().eval(), example, {0: batch}

    class TextTower(torch.nn.Module):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(encode_text(model, tokens), dim=-1)

    context = int(model.positional_embedding.shape[0])
    length = torch.export.Dim("length", min=2, max=context)
    example = embedder.tokenizer(["a photo of a dog.", "x"])[:, : min(8, context)]
    return TextTower().eval(), example, {0: batch, 1: length}
