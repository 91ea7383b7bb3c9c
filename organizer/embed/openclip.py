"""The open_clip embedder. The only module that imports torch, and the only place that may
reach the network (to download pretrained weights into the Hugging Face cache)."""

from __future__ import annotations

import difflib
import logging
import os
import pickle
import socket
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from organizer.embed import ModelShape, ModelSpec, random_weights_warning, remembered, sha256_file
from organizer.errors import ModelError, WeightsUnavailableError
from organizer.imaging import PreprocessSpec

_TORCH_PRECISION = {"fp32": "fp32", "bf16": "pure_bf16", "fp16": "fp16"}
_INPUT_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


def _register_config(spec: ModelSpec) -> None:
    import open_clip

    if spec.config_json is None:
        if spec.name not in open_clip.list_models():
            close = difflib.get_close_matches(spec.name, open_clip.list_models(), n=5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ModelError(
                f"unknown model {spec.name!r}: pass an open_clip model name or a model-config "
                f"JSON path.{hint}"
            )
        return
    with tempfile.TemporaryDirectory(prefix="organizer-model-") as folder:
        path = Path(folder) / f"{spec.name}.json"
        path.write_text(spec.config_json)
        open_clip.add_model_config(path)  # read now; a later rescan skips the file gone


def checkpoint_places(cfg: dict) -> dict:
    """Where open_clip's pretrained entry ``cfg`` has its checkpoint once downloaded: a
    Hugging Face repository and the file names tried there (safetensors first), a file name
    in open_clip's download folder, or a path. ``cache_dir`` is not in it: each lookup
    passes its own."""
    if cfg.get("file"):
        return {"path": cfg["file"]}
    hub = cfg.get("hf_hub", "")
    if hub:
        from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

        repo_id, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        return {"hf_hub": [[repo_id, n] for n in [*_get_safe_alternatives(filename), filename]]}
    url = cfg.get("url", "")
    if url:  # open_clip's own download folder, unless given one
        return {"clip_cache_file": os.path.basename(url)}
    return {}


def _download_host(cfg: dict) -> str:

    if cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname or "huggingface.co"
    return urlparse(cfg.get("url", "")).hostname or "huggingface.co"


def _hub_offline() -> bool:
    """Hugging Face's own switch for no network, honoured as ORGANIZER_OFFLINE is."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _checked_tag_weights(spec: ModelSpec, checkpoint: str) -> ModelSpec:
    """The spec with the content hash of the file its tag resolved to. A library records it
    with its first vectors; later loads refuse a file with other content (a new revision in
    the cache would silently mix vectors of two models)."""
    digest = sha256_file(Path(checkpoint))
    if spec.weights_sha256 and digest != spec.weights_sha256:
        raise ModelError(
            f"the weights cached for {spec.describe()} ({checkpoint}) are not the ones this "
            f"library was built with (sha256 {spec.weights_sha256[:12]}…, found "
            f"{digest[:12]}…): restore that file, or use another --library"
        )
    return replace(spec, weights_sha256=digest)


def _reachable(host: str, timeout_s: float = 3.0) -> bool:
    """One quick connection attempt, so that an offline machine fails in seconds, not minutes."""

    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _weights_path(spec: ModelSpec, offline: bool, cache_dir: str | None) -> tuple[str, dict]:
    """Resolve ``spec.pretrained`` to a checkpoint file, downloading it when allowed."""
    import open_clip

    if spec.is_checkpoint_path:
        return spec.pretrained, {}
    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.name)
        known = f"known tags: {', '.join(tags)}" if tags else "it has no published weights"
        raise ModelError(
            f"unknown weights {spec.pretrained!r} for model {spec.name} ({known}); or pass "
            f"--pretrained PATH to a checkpoint, or --pretrained none for random weights"
        )
    path = remembered.find_checkpoint(checkpoint_places(cfg), cache_dir)
    offline = offline or _hub_offline()
    remedy = f"weights for {spec.describe()} are not cached" + (
        " and downloads are off (ORGANIZER_OFFLINE or HF_HUB_OFFLINE)" if offline else ""
    )
    if path is None and not offline:
        host = _download_host(cfg)
        if not _reachable(host):
            remedy += f" and {host} cannot be reached"
        else:
            logging.disable(logging.WARNING)  # the hub client logs every retry
            try:
                path = open_clip.download_pretrained(cfg, cache_dir=cache_dir) or None
            except Exception as exc:  # network errors come in many types
                remedy += f" and the download failed ({type(exc).__name__})"
            finally:
                logging.disable(logging.NOTSET)
    if path is None:
        raise WeightsUnavailableError(
            f"{remedy}: connect to the internet once to fill the Hugging Face cache, or pass "
            f"--pretrained /path/to/open_clip_model.safetensors"
        )
    return path, cfg


class OpenClipEmbedder:
    """An open_clip model ready for inference. Build it with :func:`load`."""

    def __init__(
        self,
        spec: ModelSpec,
        model: Any,
        tokenizer: Any,
        preprocess: PreprocessSpec,
        device: str,
        precision: str,
    ) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.device = device
        self.precision = precision
        self.dim = 0  # from the text projection, or what an image comes out as (below)
        self._dtype = _INPUT_DTYPE[precision]
        # On the 0-255 scale of the uint8 pixels it takes (an exported image tower does the
        # same normalising in its graph).
        self.pixel_mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1) * 255
        self.pixel_std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1) * 255
        if _has_tensor(model, "text_projection"):
            self.dim = int(model.text_projection.shape[1])
        else:
            probe = np.zeros((1, *preprocess.size, 3), dtype=np.uint8)
            self.dim = int(self.embed_pixels(probe).shape[1])

    @torch.inference_mode()
    def embed_pixels(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Unit vectors of uint8 (n, height, width, 3) pixels: an array, or a tensor (on the
        model's device when decoded there: see :mod:`organizer.embed.device_decode`)."""
        if isinstance(batch, torch.Tensor):
            x = batch.to(self.device)
        else:
            if not batch.flags.writeable:  # a decoded image's pixels (np.asarray of Pillow's):
                batch = batch.copy()  # torch warns on read-only arrays; the copy is one image
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        x = ((x - self.pixel_mean) / self.pixel_std).to(self._dtype)
        features = self.model.encode_image(x).float()
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> unit vectors, in batches of similar length, each cut after its longest
        prompt's end token (see :func:`pooled_length`): padding costs nothing."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(texts)
        lengths = pooled_length(self.model, tokens)
        order = torch.argsort(lengths) if lengths is not None else torch.arange(len(texts))
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        for start in range(0, len(texts), _TEXT_BATCH):
            rows = order[start : start + _TEXT_BATCH]
            batch = tokens[rows]
            if lengths is not None:
                batch = batch[:, : int(lengths[rows].max())]
            features = encode_text(self.model, batch.to(self.device)).float()
            out[rows] = torch.nn.functional.normalize(features, dim=-1).cpu()
        return out.numpy()


_TEXT_BATCH = 64


def pooled_length(model: Any, tokens: torch.Tensor) -> torch.Tensor | None:
    """Per prompt, how many leading tokens decide its pooled feature; None when all do.

    The classic ``CLIP`` text tower is causal and pooled at the end token (``argmax``/``eos``),
    so no position sees the padding after it: cutting the padding leaves the end token's
    features unchanged. Other towers (bidirectional, class-token pooled, or open_clip's
    ``TextTransformer``, which does not cut its mask to the input) keep the full length.
    """
    from open_clip.model import CLIP

    if type(model) is not CLIP or getattr(model, "attn_mask", None) is None:
        return None
    if model.text_pool_type == "argmax":
        return tokens.argmax(dim=-1) + 1
    eos = getattr(model, "text_eos_id", None)
    if model.text_pool_type == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1) + 1
    return None


def encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` for token rows that may be shorter than the context length: the
    classic ``CLIP`` class adds its full position embedding and mask, so its steps are repeated
    here with both cut to the input's length (a test pins it to ``model.encode_text``)."""
    from open_clip.model import CLIP
    from open_clip.transformer import text_global_pool

    if type(model) is not CLIP:
        return model.encode_text(tokens)
    n = tokens.shape[1]  # no branch on it: the ONNX export keeps the length dynamic
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x if model.text_projection is None else x @ model.text_projection


def _has_tensor(model: Any, name: str) -> bool:
    return isinstance(getattr(model, name, None), torch.Tensor)


def _weights(
    spec: ModelSpec, offline: bool, cache_dir: str | None
) -> tuple[ModelSpec, str | None, dict]:
    """What :func:`load` and :func:`describe` both settle first: the registered config, the
    checkpoint (None for random weights, which are warned about), the spec with a tag's
    checkpoint hash, and open_clip's creation options that the weights imply."""
    _register_config(spec)
    if spec.is_random:
        random_weights_warning(spec, stacklevel=4)
        return spec, None, {}
    checkpoint, cfg = _weights_path(spec, offline, cache_dir)
    if not spec.is_checkpoint_path:
        spec = _checked_tag_weights(spec, checkpoint)
        if cache_dir is None:  # a new library finds it next time without torch
            remembered.remember_checkpoint(spec, checkpoint_places(cfg))
    kwargs = {
        "force_preprocess_cfg": {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg},
        "force_quick_gelu": bool(cfg.get("quick_gelu", False)),
    }
    return spec, checkpoint, kwargs


def describe(spec: ModelSpec, offline: bool = False, cache_dir: str | None = None) -> ModelShape:
    """The model's vector size and input, from its architecture built on PyTorch's meta
    device (no memory, no initialisation: ~0.05 s instead of a load). A tag's checkpoint is
    found (and hashed) as :func:`load` would, but not read.

    Raises:
        ModelError, WeightsUnavailableError: as :func:`load`.
    """
    import open_clip

    spec, _, kwargs = _weights(spec, offline, cache_dir)
    # No tower weights of another library (an HF text model's) are fetched for a shape.
    kwargs.update(device="meta", pretrained_text=False)
    try:
        logging.disable(logging.WARNING)
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = open_clip.create_model(spec.name, pretrained=None, **kwargs)
    except Exception as exc:
        raise ModelError(
            f"cannot build {spec.describe()}: {str(exc).splitlines()[0][:300]}"
        ) from None
    finally:
        logging.disable(logging.NOTSET)
    preprocess = PreprocessSpec.from_open_clip(open_clip.get_model_preprocess_cfg(model))
    if _has_tensor(model, "text_projection"):
        dim = int(model.text_projection.shape[1])
    else:  # a projection layer or none: run the image tower on a meta probe
        with torch.device("meta"):
            probe = torch.zeros((1, 3, *preprocess.size))
            dim = int(model.encode_image(probe).shape[-1])
    return ModelShape(spec, dim, preprocess)


def load(
    spec: ModelSpec,
    device: str,
    precision: str,
    offline: bool = False,
    cache_dir: str | None = None,
) -> OpenClipEmbedder:
    """Create the open_clip model named by ``spec`` with its weights, ready for inference, on
    ``device`` ("cpu" or "cuda") in ``precision`` ("fp32", "bf16" or "fp16"): what
    :func:`organizer.embed.runtime.plan` settled (it checks that they can run here).

    Random weights (``spec.pretrained == "none"``) are seeded, so every process builds the
    same model; a :class:`RandomWeightsWarning` is issued.

    Raises:
        ModelError: unknown model or tag, a checkpoint that does not fit the model.
        WeightsUnavailableError: weights neither cached nor downloadable.
    """
    import open_clip

    spec, checkpoint, kwargs = _weights(spec, offline, cache_dir)
    kwargs.update(precision=_TORCH_PRECISION[precision], device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            # open_clip reports through the root logger and warnings; organizer reports itself.
            logging.disable(logging.WARNING)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = open_clip.create_model(spec.name, pretrained=checkpoint, **kwargs)
        except pickle.UnpicklingError:
            raise ModelError(
                f"cannot load {spec.describe()}: the checkpoint is not a plain weights file "
                "(loading it would run code, so it is refused); use a .safetensors checkpoint"
            ) from None
        except Exception as exc:  # open_clip and torch raise many types for a bad checkpoint
            raise ModelError(
                f"cannot load {spec.describe()}: {str(exc).splitlines()[0][:300]}"
            ) from None
        finally:
            logging.disable(logging.NOTSET)
    model.eval()
    preprocess = PreprocessSpec.from_open_clip(open_clip.get_model_preprocess_cfg(model))
    tokenizer = open_clip.get_tokenizer(spec.name)
    return OpenClipEmbedder(spec, model, tokenizer, preprocess, device, precision)
