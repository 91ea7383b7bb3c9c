"""The vector index: a derived cache of the vectors stored in the database.

``index`` searches (``filtered``: among the ids a filter allows), ``kinds`` chooses what to
build, ``rerank`` keeps exact vectors on disk for compressed indexes, ``files`` writes and
checks the files, ``cache`` keeps them in step with the database, ``grown`` grows them in
place (``calibration`` keeps its recall measurable), ``shards`` trains once and fills on
several machines, ``pairs`` finds near-duplicate pairs by joining the lists that ``lists``
reads back.
"""

from organizer.vectors.cache import (
    DatabaseFileRecord,
    FileRecord,
    IndexBuild,
    IndexCache,
    IndexDelta,
    SidecarFileRecord,
)
from organizer.vectors.files import file_sha256, read_index, write_index
from organizer.vectors.index import Hits, VectorIndex
from organizer.vectors.kinds import CHOICES, FLAT_MAX, IndexPlan, parse_memory, plan

__all__ = [
    "CHOICES",
    "FLAT_MAX",
    "DatabaseFileRecord",
    "FileRecord",
    "Hits",
    "IndexBuild",
    "IndexCache",
    "IndexDelta",
    "IndexPlan",
    "SidecarFileRecord",
    "VectorIndex",
    "file_sha256",
    "parse_memory",
    "plan",
    "read_index",
    "write_index",
]
