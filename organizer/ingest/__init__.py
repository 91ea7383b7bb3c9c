"""Ingest: diff a scan against the store, decode and embed what is new, write it in batches.

:mod:`.plan` decides what each file needs (reads only), :mod:`.run` reads, decodes and
embeds, and :mod:`.writer` is the one place that writes, a batch per transaction.
"""

from organizer.ingest.distributed import RayOptions
from organizer.ingest.plan import Target
from organizer.ingest.run import IngestOptions, Ingestor
from organizer.ingest.summary import IngestSummary, Progress

__all__ = ["IngestOptions", "IngestSummary", "Ingestor", "Progress", "RayOptions", "Target"]
