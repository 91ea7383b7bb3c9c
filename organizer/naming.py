"""Naming clusters by zero-shot CLIP over a vocabulary of everyday photo concepts.

Each concept's text vector is the normalised mean of its prompt templates (as open_clip's
zero-shot classifiers build class vectors); a cluster's label is the concept closest to its
centroid. Concept vectors are cached in the library folder per model and vocabulary.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organizer.atomic import replacing
from organizer.embed import Embedder, ModelSpec
from organizer.errors import ClusterError
from organizer.resources import vocabulary_path

DEFAULT_TEMPLATES = ("a photo of {}.",)
_TEXT_BATCH = 256
_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Vocabulary:
    concepts: tuple[str, ...]
    templates: tuple[str, ...]
    source: str

    @property
    def sha256(self) -> str:
        text = "\n".join(self.templates) + "\n\n" + "\n".join(self.concepts)
        return hashlib.sha256(text.encode()).hexdigest()


def load_vocabulary(path: Path | None = None) -> Vocabulary:
    """Read a vocabulary file: one concept a line, ``template: ...{}...`` lines, ``#`` comments.

    Raises:
        ClusterError: the file cannot be read, has no concepts, or a template lacks ``{}``.
    """
    path = Path(path).expanduser() if path else vocabulary_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterError(
            f"cannot read vocabulary {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    concepts, templates = [], []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.lower().startswith("template:"):
            template = line.split(":", 1)[1].strip()
            if "{}" not in template:
                raise ClusterError(
                    f"vocabulary {path}: template {template!r} has no {{}} for the concept"
                )
            templates.append(template)
        elif line not in concepts:
            concepts.append(line)
    if not concepts:
        raise ClusterError(f"vocabulary {path} lists no concepts (one a line)")
    return Vocabulary(tuple(concepts), tuple(templates) or DEFAULT_TEMPLATES, str(path))


def short_label(concept: str) -> str:
    """'a sunset' -> 'sunset': the label without its leading article."""
    return _ARTICLE.sub("", concept).strip()


def concept_vectors(
    get_embedder: Callable[[], Embedder],
    spec: ModelSpec,
    dim: int,
    vocabulary: Vocabulary,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    ready: Callable[[], None] | None = None,
) -> np.ndarray:
    """(concepts x dim) unit vectors, from the cache file when it matches model and vocabulary;
    ``get_embedder()`` (which may load a model) is called only on a cache miss. ``ready()``
    is called once what remains is mostly computing: after a cache hit, or once the
    libraries that will embed the prompts are imported."""
    ready = ready or (lambda: None)
    identity = f"{spec.describe()}|{spec.weights_sha256}|{spec.config_json}|{vocabulary.sha256}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    cache = cache_dir / f"concepts-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            cached = np.load(cache, allow_pickle=False)
            if cached.shape == (len(vocabulary.concepts), dim):
                ready()
                return cached
        except (OSError, ValueError):
            pass
    embedder = get_embedder()
    prompts = [t.format(c) for c in vocabulary.concepts for t in vocabulary.templates]
    prepare = getattr(embedder, "prepare_texts", None)  # a lazy embedder's imports
    if prepare is not None:
        prepare(len(prompts))
    ready()
    # Batches of similar length: the embedder cuts each batch after its longest prompt.
    order = np.argsort([len(p) for p in prompts], kind="stable")
    texts = np.empty((len(prompts), dim), dtype=np.float32)
    for start in range(0, len(prompts), _TEXT_BATCH):
        if progress:
            progress(start, len(prompts))
        rows = order[start : start + _TEXT_BATCH]
        texts[rows] = embedder.embed_texts([prompts[i] for i in rows])
    means = texts.reshape(len(vocabulary.concepts), len(vocabulary.templates), -1).mean(axis=1)
    vectors = (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )
    if cache is not None:
        _save_atomic(cache, vectors)
    return vectors


def _save_atomic(path: Path, array: np.ndarray) -> None:
    try:
        with replacing(path, fsync=False, prefix=".concepts-", suffix=".npy") as tmp:
            np.save(tmp, array, allow_pickle=False)
    except OSError:
        pass  # a cache only


def name(
    centroids: np.ndarray, concepts: np.ndarray, vocabulary: Vocabulary, top: int = 3
) -> list[list[tuple[str, float]]]:
    """For each centroid, its name and ``top - 1`` alternatives, with their cosine scores.

    No two clusters share a name: names are an assignment over the cluster x concept score
    matrix (the pairing with the highest total score), so similar clusters get the
    best distinct concepts instead of all taking the same one. The alternatives are each
    cluster's next best concepts. With more clusters than concepts, names repeat.
    """
    from scipy.optimize import linear_sum_assignment

    scores = centroids @ concepts.T
    chosen = scores.argmax(axis=1)
    if len(centroids) <= len(vocabulary.concepts):
        rows, cols = linear_sum_assignment(-scores)
        chosen[rows] = cols
    out = []
    for row, name in zip(scores, chosen, strict=True):
        others = [i for i in np.argsort(-row, kind="stable") if i != name][: top - 1]
        out.append(
            [
                (short_label(vocabulary.concepts[i]), round(float(row[i]), 4))
                for i in [name, *others]
            ]
        )
    return out


def closest(
    vectors: np.ndarray, concepts: np.ndarray, vocabulary: Vocabulary
) -> list[tuple[str, float]]:
    """Each vector's closest concept and its cosine score. Unlike :func:`name`, two vectors
    may share a label: many events are at a beach."""
    if not len(vectors):
        return []
    scores = vectors @ concepts.T
    best = scores.argmax(axis=1)
    return [
        (short_label(vocabulary.concepts[i]), round(float(row[i]), 4))
        for row, i in zip(scores, best, strict=True)
    ]


def slug(label: str, limit: int = 40) -> str:
    """A filesystem-safe folder name part: lowercase ascii letters, digits and dashes."""
    text = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return text[:limit].strip("-") or "cluster"
