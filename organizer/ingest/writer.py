"""The one writer of an ingest: applies what the run decided, a batch per transaction.

Each batch is one transaction holding image rows and their vectors together, so after a
kill the next run sees committed files as unchanged and redoes only the rest. Every vector
write goes through :meth:`BatchWriter._set_vector`, so the index update knows the exact ids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Connection, Engine

from organizer.errors import OrganizerError
from organizer.ingest.metadata import name_places_of, record_meta
from organizer.ingest.plan import FileWork, Target, Unlistable
from organizer.ingest.summary import IngestSummary
from organizer.photo_meta import PhotoMeta
from organizer.pipeline import CHANGED_WHILE_READING, Prepared
from organizer.sources import Storage, fingerprint, is_local_folder, is_remote
from organizer.store import meta_queries as mq
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import ImageRecord, ImageStatus, KnownImage

if TYPE_CHECKING:
    from organizer.embed import Embedder, ModelShape
    from organizer.imaging import ImageInfo


# -- what a batch does: one frozen record per kind of write --------------------------------


@dataclass(frozen=True)
class Touch:
    """Same content as recorded, new size or modification time: update the stat only."""

    image_id: int
    size: int
    mtime_ns: int
    etag: str | None = None


@dataclass(frozen=True)
class Move:
    """A file that vanished turned up at a new path: the image (id, vector) moves with it."""

    image_id: int
    work: FileWork
    prepared: Prepared


@dataclass(frozen=True)
class Embed:
    """A file embedded in this batch, with its vector."""

    work: FileWork
    prepared: Prepared
    vector: np.ndarray


@dataclass(frozen=True)
class Copy:
    """A file whose content another image already has a vector for: the vector is copied."""

    work: FileWork
    prepared: Prepared


@dataclass(frozen=True)
class Fail:
    """A file that could not be read or decoded: recorded with the reason, retried on change."""

    work: FileWork
    prepared: Prepared


Op = Touch | Move | Embed | Copy | Fail


@dataclass(frozen=True)
class _VectorSource:
    """A stored vector that is about to be replaced, kept for files still to be copied."""

    vector: np.ndarray
    image: ImageRecord


class BatchWriter:
    """Writes the decisions of one ingest run; counts what it wrote into ``summary``."""

    def __init__(
        self,
        engine: Engine,
        model_id: int | None,
        summary: IngestSummary,
        run_id: int | None = None,
        storage: Storage | None = None,
    ):
        """``run_id``: the ingest run to record progress on, with each batch; ``storage``:
        how its bucket roots are reached (a shard is looked at again at the end)."""
        self.storage = storage or Storage()
        self.engine = engine
        self.model_id = model_id
        self.summary = summary
        self.run_id = run_id
        self.written: set[int] = set()  # images whose vector this run wrote or removed
        # content hash -> an image whose stored vector has that content, for copies
        self._hash_to_id: dict[str, int] = {}
        self._released: dict[str, _VectorSource] = {}
        self._dim: int | None = None
        self._read: list[tuple[int, PhotoMeta]] = []  # the batch's images and their metadata

    # -- set-up ----------------------------------------------------------------------------

    def prepare_targets(
        self,
        targets: list[Target],
        embedder: Embedder | ModelShape | None,
        dim: int | None,
        preprocess: dict | None,
        endpoint_url: str | None = None,
    ) -> None:
        """Record the model (first ingest) and the new roots; merge roots a target absorbs.
        ``endpoint_url``: the endpoint given for this run, kept with its bucket roots."""
        with write_transaction(self.engine) as conn:
            if self.model_id is None and embedder is not None:
                self.model_id = q.insert_model(conn, embedder.spec, embedder.dim, preprocess)
            for target in targets:
                # kept with a root named on the command line, not every root a plain ingest
                # walks (the endpoint was meant for the bucket given)
                named = is_remote(target.root_path) and not target.optional
                endpoint = endpoint_url if named else None
                if target.root_id is None:
                    target.root_id = q.add_root(conn, target.root_path, endpoint)
                elif endpoint:
                    q.set_root_endpoint(conn, target.root_id, endpoint)
                for child_id, child_prefix in target.absorb:
                    q.absorb_root(conn, target.root_id, child_id, child_prefix)
                target.absorb = []
        self._dim = dim
        if self.model_id is not None:
            with self.engine.connect() as conn:
                self._hash_to_id = q.embedded_hashes(conn, self.model_id)

    def record_preprocess(self, preprocess: dict) -> None:
        with write_transaction(self.engine) as conn:
            q.record_preprocess(conn, self._model(), preprocess)

    def _model(self) -> int:
        """The model's id, known once the first batch began."""
        assert self.model_id is not None, "the writer has no model yet"
        return self.model_id

    def known_hashes(self) -> frozenset[str]:
        """Contents that already have a stored vector (their files need no decoding)."""
        return frozenset(self._hash_to_id)

    def has_vector_for(self, content_hash: str) -> bool:
        """Whether some image's stored vector has this content (so a file can copy it)."""
        return content_hash in self._hash_to_id or content_hash in self._released

    # -- batches ---------------------------------------------------------------------------

    def write(self, ops: list[Op], progress: dict | None = None) -> None:
        """Apply ``ops`` in order, in one transaction (with the run's ``progress``)."""
        if not ops:
            return
        # Named before the transaction: the gazetteer's first load must not hold the lock.
        places = name_places_of(
            [op.prepared.info.meta for op in ops if isinstance(op, Embed) and op.prepared.info]
        )
        self._read = []
        with write_transaction(self.engine) as conn:
            fresh: list[Embed] = []  # new images embedded: inserted together (see _insert)
            for op in ops:
                if isinstance(op, Embed) and op.work.known is None:
                    fresh.append(op)
                    continue
                self._insert(conn, fresh)  # before anything that may read them
                fresh = []
                self._apply(conn, op)
            self._insert(conn, fresh)
            record_meta(conn, self._read, places)
            if self.run_id is not None and progress is not None:
                q.run_progress(conn, self.run_id, {**self.summary.to_dict(), **progress})

    def _apply(self, conn: Connection, op: Op) -> None:
        match op:
            case Touch(image_id, size, mtime_ns, etag):
                q.update_image(conn, image_id, size=size, mtime_ns=mtime_ns, etag=etag)
            case Move(image_id, work, p):
                q.update_image(
                    conn,
                    image_id,
                    root_id=work.target.root_id,
                    relpath=work.relpath,
                    size=p.size,
                    mtime_ns=p.mtime_ns,
                    etag=work.etag,
                    status=ImageStatus.OK,
                    failure_reason=None,
                )
            case Embed(work, p, vector):
                assert p.content_hash is not None and p.info is not None  # decoded
                image_id = self._store(conn, work, p, p.info)
                self._set_vector(conn, image_id, vector)
                self._hash_to_id[p.content_hash] = image_id
                self._read.append((image_id, p.info.meta))
            case Copy(work, p):
                assert p.content_hash is not None  # hashed
                source = self._source(conn, p.content_hash)
                image_id = self._store(conn, work, p, source.image)
                self._set_vector(conn, image_id, source.vector)
                self._copy_meta(conn, source.image.id, image_id)
                self._hash_to_id.setdefault(p.content_hash, image_id)
                self.summary.reused += 1
            case Fail(work, p):
                reason = p.error or "unknown error"
                if p.mtime_ns == CHANGED_WHILE_READING and work.target.scan is not None:
                    work.target.scan.version = None  # a shard to list again: see finish()
                self._store_failure(conn, work, p.size, p.mtime_ns, p.content_hash, reason)

    def _insert(self, conn: Connection, ops: list[Embed]) -> None:
        """New images and their vectors in two statements (batched INSERTs on SQLite, binary
        COPY on PostgreSQL) instead of two a file: what a driver fed by many machines spends
        most of its time on. The rows are those :meth:`_store` would write."""
        if not ops:
            return
        rows = []
        for op in ops:
            p, info = op.prepared, op.prepared.info
            assert p.content_hash is not None and info is not None  # decoded
            rows.append(
                dict(
                    root_id=op.work.target.root_id,
                    relpath=op.work.relpath,
                    size=p.size,
                    mtime_ns=p.mtime_ns,
                    etag=op.work.etag,
                    content_hash=p.content_hash,
                    width=info.width,
                    height=info.height,
                    format=info.format,
                )
            )
        vectors = np.stack([self._checked(op.vector) for op in ops])
        ids = q.insert_embedded(conn, self._model(), rows, vectors)
        self.summary.new += len(ops)
        self.written.update(ids)
        for op, image_id in zip(ops, ids, strict=True):
            p, info = op.prepared, op.prepared.info
            assert p.content_hash is not None and info is not None  # as above
            self._hash_to_id[p.content_hash] = image_id
            self._read.append((image_id, info.meta))

    def _copy_meta(self, conn: Connection, source_id: int, image_id: int) -> None:
        """The same bytes have the same header: a copy takes what was read of its source
        (read in this batch, or stored); a source replaced meanwhile leaves it to be read
        from its own header after the run."""
        pending = next((m for i, m in reversed(self._read) if i == source_id), None)
        if pending is not None:
            self._read.append((image_id, pending))
        elif source_id in self._hash_to_id.values():
            mq.copy_meta(conn, source_id, image_id)

    def _source(self, conn: Connection, content_hash: str) -> _VectorSource:
        """The stored vector (and image) of some image with this content, as of now."""
        if content_hash in self._hash_to_id:
            source_id = self._hash_to_id[content_hash]
            vector = q.get_vector(conn, source_id, self._model())
            assert vector is not None  # _hash_to_id lists stored vectors only
            return _VectorSource(vector, q.describe_image(conn, source_id))
        return self._released[content_hash]

    def _set_vector(self, conn: Connection, image_id: int, vector: np.ndarray | None) -> None:
        q.put_vector(conn, image_id, self._model(), self._checked(vector))
        self.written.add(image_id)

    def _checked(self, vector: np.ndarray | None) -> np.ndarray:
        if vector is None or vector.shape != (self._dim,):
            raise RuntimeError("internal error: an image has no valid vector")
        return vector

    def _release(self, conn: Connection, known: KnownImage | None) -> None:
        """Before a known image's vector is replaced or removed: keep it for files of its old
        content that this run still has to copy it to."""
        if known is None or not known.content_hash:
            return
        if self._hash_to_id.get(known.content_hash) == known.id:
            del self._hash_to_id[known.content_hash]
            vector = q.get_vector(conn, known.id, self._model())
            if vector is not None:
                image = q.describe_image(conn, known.id)
                self._released[known.content_hash] = _VectorSource(vector, image)

    def _store(
        self, conn: Connection, work: FileWork, p: Prepared, facts: ImageInfo | ImageRecord
    ) -> int:
        values = dict(
            size=p.size,
            mtime_ns=p.mtime_ns,
            etag=work.etag,
            content_hash=p.content_hash,
            status=ImageStatus.OK,
            failure_reason=None,
            width=facts.width,
            height=facts.height,
            format=facts.format,
        )
        if work.known is None:
            self.summary.new += 1
            return q.insert_image(conn, root_id=work.target.root_id, relpath=work.relpath, **values)
        self.summary.changed += 1
        self._release(conn, work.known)
        q.update_image(conn, work.known.id, **values)
        # New content: what was read of the old one goes (an Embed records the new right
        # after; a Copy's is read from its header after the run).
        mq.delete_meta(conn, [work.known.id])
        return work.known.id

    def _store_failure(
        self,
        conn: Connection,
        work: FileWork | Unlistable,
        size: int,
        mtime_ns: int,
        content_hash: str | None,
        reason: str,
    ) -> None:
        self.summary.failed += 1
        values = dict(
            size=size,
            mtime_ns=mtime_ns,
            etag=getattr(work, "etag", None),
            content_hash=content_hash,
            status=ImageStatus.FAILED,
            failure_reason=reason,
        )
        if work.known is None:
            q.insert_image(conn, root_id=work.target.root_id, relpath=work.relpath, **values)
        else:
            self._release(conn, work.known)
            q.delete_vector(conn, work.known.id)
            mq.delete_meta(conn, [work.known.id])
            self.written.add(work.known.id)
            q.update_image(conn, work.known.id, **values)

    # -- the end ---------------------------------------------------------------------------

    def finish(
        self,
        unlistable: list[Unlistable],
        restore: list[int],
        vanished: list[KnownImage],
        targets: list[Target],
    ) -> None:
        """Record what could not be listed, bring back unchanged returns, and mark what
        vanished: ok images go missing (their vector kept), failed ones are forgotten."""
        gone_ok = [k.id for k in vanished if k.status == ImageStatus.OK]
        gone_failed = [k.id for k in vanished if k.status == ImageStatus.FAILED]
        with write_transaction(self.engine) as conn:
            for item in unlistable:
                size, mtime_ns = _lstat(item.target.root_path, item.relpath)
                self._store_failure(conn, item, size, mtime_ns, None, item.reason)
            for image_id in restore:
                q.update_image(conn, image_id, status=ImageStatus.OK)
            q.mark_missing(conn, gone_ok)
            q.delete_images(conn, gone_failed)
            for target in targets:
                assert target.root_id is not None  # added by begin()
                if target.skipped:
                    continue  # not scanned: its last scan and fingerprint stand
                version = shard_version(target, self.storage) if target.shard else None
                q.touch_root(conn, target.root_id, version, shard=target.shard)
        self.summary.unchanged += len(restore)
        self.summary.missing = len(gone_ok)


def shard_version(target: Target, storage: Storage) -> str | None:
    """The fingerprint to record for a shard read whole in this run: the listing's, unless a
    member is to be read again (it failed for a reason that passes) or the shard changed
    during the run (what was read of it may not be what it holds). None otherwise: then it
    is listed again next time."""
    scan = target.scan
    if scan is None or scan.version is None or scan.unchanged:
        return scan.version if scan is not None else None
    try:
        now = fingerprint(target.root_path, storage)
    except OrganizerError:
        return None
    return scan.version if now == scan.version else None


def _lstat(root: str, relpath: bytes) -> tuple[int, int]:
    if not is_local_folder(root):
        return 0, 0  # an object or a shard member: nothing to stat on this machine
    try:
        st = os.lstat(os.path.join(os.fsencode(root), relpath))
        return st.st_size, st.st_mtime_ns
    except OSError:
        return 0, 0
