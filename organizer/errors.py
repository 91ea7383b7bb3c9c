"""The one exception tree of organizer.

Every error a user can cause or fix derives from :class:`OrganizerError`; the CLI turns it into
one sentence on stderr and exit code 1, or exit code 2 for an :class:`OptionsError` (a usage
error). Messages say what failed and what to do about it.
"""


class OrganizerError(Exception):
    """Base class: a failure the user can understand and act on."""


class LibraryError(OrganizerError):
    """The library directory cannot be opened, created or written."""


class LibraryBusyError(LibraryError):
    """Another process holds the library's writer lock."""


class StorageError(LibraryError):
    """A bucket or its service cannot be used: missing, denied, unreachable, or gone in the
    middle of a run (what was committed is kept; the same command later finishes the rest)."""


class NotFoundError(StorageError):
    """An object (or a shard) that is not there: the service itself answered."""


class ConnectionLostError(LibraryError):
    """The connection to the library's database broke mid-command (a server restart, a
    network failure); what was committed is kept."""


class SchemaError(LibraryError):
    """The database schema is newer than this program or cannot be migrated."""


class ModelError(OrganizerError):
    """A model name, config or weights cannot be resolved or loaded."""


class ModelMismatchError(ModelError):
    """A command asked for a model other than the one the library was built with."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights are neither cached locally nor downloadable."""


class ImageError(OrganizerError):
    """An image file cannot be decoded; ingest records it as failed and goes on."""


class ImageTooLargeError(ImageError):
    """An image over the pixels a decode may cost (an uploaded query): a smaller copy works."""


class QueryError(OrganizerError):
    """A search, similar or duplicates query is malformed or cannot be answered."""


class ClusterError(OrganizerError):
    """A clustering request cannot be carried out (bad k, empty library, unknown run)."""


class ReportError(OrganizerError):
    """A report cannot be produced or written."""


class Interrupted(OrganizerError):
    """The user asked a long run to stop; what was committed is kept."""


class OptionsError(OrganizerError, ValueError):
    """The one usage error: an option, setting or argument that cannot work (exit code 2).

    It is a ValueError too, so that an option's parser may raise it and the command line
    reports it as it reports its own parameter errors.
    """

    exit_code = 2


class LibraryURLError(LibraryError, OptionsError):
    """A --library value that is a URL organizer cannot use."""


class IndexPlanError(OptionsError):
    """An index kind or memory budget that cannot be built."""


class GazetteerError(OrganizerError):
    """The place gazetteer (town names for photo coordinates) is missing or unreadable."""


class PlanError(OptionsError):
    """A clean-up plan file that cannot be read or would do something unsafe."""


class CleanError(OrganizerError):
    """A clean-up or its undo cannot go on (a journal that cannot be written or read)."""
