"""Reports on finished runs: a Markdown file and a self-contained HTML page with curves,
comparison table, per-class IoU and sample predictions (``transkd report``)."""

from .report import ReportResult, write_report

__all__ = ["ReportResult", "write_report"]
