"""Which model a library uses, checked, and loaded once.

The model the library's vectors were made with wins; settings may only name the same one
(``--model``/``--pretrained`` for a new library). A checkpoint file named by path must still
be the file the vectors were made with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sqlalchemy import Engine

from organizer.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, Settings
from organizer.embed import Embedder, ModelShape, ModelSpec, loader, request_spec, sha256_file
from organizer.errors import ModelError, ModelMismatchError
from organizer.store import queries as q
from organizer.store.records import LibraryModel

EmbedderLoader = Callable[[ModelSpec, Settings], Embedder]


def load_open_clip(spec: ModelSpec, settings: Settings) -> Embedder:
    """The default embedder loader: open_clip in torch or ONNX Runtime (torch imported only
    if it runs)."""
    return loader.load(
        spec, settings.device, settings.precision, settings.runtime, settings.offline
    )


class ModelSource:
    """A library's model: its record, the spec the settings ask for, the loaded embedder."""

    def __init__(self, engine: Engine, settings: Settings, loader: EmbedderLoader, open_clip: bool):
        """``loader`` makes the embedder when first needed; ``open_clip``: it is open_clip's
        own loader, so :meth:`shape` can read the model's shape without its weights."""
        self.engine = engine
        self.settings = settings
        self._loader = loader
        self._open_clip = open_clip
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()  # ingest loads it on a thread of its own

    @property
    def loaded(self) -> Embedder | None:
        """The embedder if it was loaded already, else None (nothing is loaded)."""
        return self._embedder

    def recorded(self) -> LibraryModel | None:
        """The model this library's vectors were made with (None before the first ingest)."""
        with self.engine.connect() as conn:
            return q.library_model(conn)

    def requested_spec(self) -> ModelSpec:
        """The model the settings ask for, gaps filled from the library's record or defaults.

        Raises:
            ModelMismatchError: the settings name another model than the library's.
        """
        recorded = self.recorded()
        s = self.settings
        if recorded is None:
            return request_spec(s.model or DEFAULT_MODEL, s.pretrained or DEFAULT_PRETRAINED)
        if s.model is None and s.pretrained is None:
            return recorded.spec
        base = recorded.spec if s.model is None else request_spec(s.model, "none")
        if s.pretrained is None:
            spec = replace(
                base,
                pretrained=recorded.spec.pretrained,
                weights_sha256=recorded.spec.weights_sha256,
            )
        else:
            spec = replace(request_spec(base.name, s.pretrained), config_json=base.config_json)
        if not recorded.spec.same_model(spec):
            raise ModelMismatchError(
                f"this library was built with {recorded.spec.describe()}; it cannot mix in "
                f"vectors of {spec.describe()}: leave out --model/--pretrained, or use another "
                f"--library"
            )
        return recorded.spec

    def checked_spec(self) -> ModelSpec:
        """:meth:`requested_spec`, its checkpoint file (if named by path) checked unchanged."""
        spec = self.requested_spec()
        if spec.is_checkpoint_path and spec.weights_sha256:
            check_checkpoint(spec)
        return spec

    def embedder(self) -> Embedder:
        """The library's model (or the requested one for a new library), loaded once."""
        with self._lock:
            if self._embedder is None:
                self._embedder = self._loader(self.checked_spec(), self.settings)
            return self._embedder

    def shape(self) -> ModelShape:
        """The model's spec, vector size and input without loading its weights (when the
        model is open_clip's; another loader's embedder is loaded)."""
        if self._embedder is None and self._open_clip:
            from organizer.embed import openclip

            return openclip.describe(self.checked_spec(), self.settings.offline)
        embedder = self.embedder()
        return ModelShape(embedder.spec, embedder.dim, embedder.preprocess)


def check_checkpoint(spec: ModelSpec) -> None:
    """The library's checkpoint file must still be the one its vectors were made with."""
    try:
        same = sha256_file(Path(spec.pretrained)) == spec.weights_sha256
    except OSError as exc:
        raise ModelError(
            f"checkpoint {spec.pretrained} of this library cannot be read "
            f"({exc.strerror}): put it back, or pass --pretrained with its new path"
        ) from None
    if not same:
        raise ModelError(
            f"checkpoint {spec.pretrained} changed since this library was built: "
            "restore the original file"
        )
