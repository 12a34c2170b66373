"""Evaluation and the run's report: metrics (scikit-learn), figures (matplotlib) and a self-contained
``report.html`` rendered with Jinja2 from what the run directory stores.

- :mod:`~train.report.metrics`: :func:`classification_metrics`, :func:`predict_proba`, :func:`inference_timing`.
- :mod:`~train.report.plots`: :func:`pyplot`, :func:`png` (a figure as PNG bytes), the report's figures.
- :mod:`~train.report.html`: :func:`table`, :func:`img`, :func:`render_report`, :func:`render_run_report`
  and :func:`add_analysis`, which stores an analysis as ``analysis/<name>.json`` and renders the report again.
- :mod:`~train.report.evaluate`: :func:`evaluate_run` (called at the end of every training run: writes
  ``metrics.json``, ``figures/`` and ``report.html``), :func:`evaluate_on`, :func:`predict_to_submission`.
- :mod:`~train.report.cli`: :func:`run_parser` and :func:`run_report_command`, what the report and
  analysis commands share (``--run``, ``--runs-dir``, exit codes).

``python -m train.evaluate`` (train/evaluate.py) is the command line.
"""
from __future__ import annotations

from .cli import EXIT_CODES, LOG_FORMAT, run_parser, run_report_command
from .evaluate import evaluate_on, evaluate_run, predict_to_submission
from .html import (
    ANALYSIS_DIR,
    FIGURES_DIR,
    REPORT_FILE,
    Table,
    add_analysis,
    analysis_sections,
    img,
    render_report,
    render_run_report,
    table,
    write_figures,
)
from .metrics import classification_metrics, confused_pairs, inference_timing, predict_proba
from .plots import image_grid, plot_confusion, plot_gallery, plot_history, plot_roc, png, pyplot, show_image

__all__ = [
    "ANALYSIS_DIR", "EXIT_CODES", "FIGURES_DIR", "LOG_FORMAT", "REPORT_FILE", "Table", "add_analysis", "analysis_sections",
    "classification_metrics", "confused_pairs", "evaluate_on", "evaluate_run", "image_grid", "img", "inference_timing",
    "plot_confusion", "plot_gallery", "plot_history", "plot_roc", "png", "predict_proba", "predict_to_submission",
    "pyplot", "render_report", "render_run_report", "run_parser", "run_report_command", "show_image", "table", "write_figures",
]
