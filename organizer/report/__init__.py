"""The HTML report: a 2-D t-SNE map of the library, its clusters and their images, in one
self-contained file. See :func:`write_report`."""

from organizer.report.build import DEFAULT_MAX_POINTS, ReportProgress, ReportSummary, write_report

__all__ = ["DEFAULT_MAX_POINTS", "ReportProgress", "ReportSummary", "write_report"]
