"""The run's ``report.html``, rendered with Jinja2 from what the run directory stores.

Rendering reads files only, so :func:`render_run_report` can redo the whole page whenever a part of it
changes::

    metrics.json, run.json, config.json, dataset.json   the evaluation (see train.report.evaluate)
    figures/<name>.png                                   its figures
    analysis/<name>.json                                 one analysis: name, title, data, tables, images
    analysis/<name>/*.png                                the analysis's images

:func:`add_analysis` stores an analysis (robustness, explanations, fairness, crossval...) and renders
the report again; a re-evaluation renders it with every stored analysis. Templates, under
``templates/`` (``autoescape``): ``report.html`` the page, ``section.html`` the frame of an analysis
(between ``<!-- analysis:NAME -->`` and ``<!-- /analysis:NAME -->``), ``analysis/<name>.html`` its body
(``analysis/default.html``, its tables and images in order, for an analysis without a template of its own).
"""
from __future__ import annotations

import base64
import functools
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"
ANALYSIS_DIR = "analysis"
SPLITS = ("validation", "test")
_NAME = re.compile(r"[A-Za-z0-9_-]+")


class Table(NamedTuple):
    """A report table: its rows, the columns shown (in order) and a format spec per numeric column."""

    rows: list[dict[str, Any]]
    columns: list[str]
    formats: dict[str, str] | None = None


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], formats: Mapping[str, str] | None = None) -> Markup:
    """An HTML table; numbers in a column of ``formats`` are formatted with its spec (``".4f"``)."""
    formats = formats or {}

    def cell(row: Mapping[str, Any], column: str) -> str:
        v = row.get(column, "")
        return format(v, formats[column]) if column in formats and isinstance(v, (int, float)) else str(v)

    head = Markup("").join(Markup("<th>{}</th>").format(c) for c in columns)
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(Markup("").join(Markup("<td>{}</td>").format(cell(r, c)) for c in columns)) for r in rows
    )
    return Markup("<table><tr>{}</tr>{}</table>").format(head, body)


def img(png: bytes | None, alt: str) -> Markup:
    """An inline ``<img>`` of PNG bytes (nothing for None), so the report is one self-contained file."""
    if not png:
        return Markup("")
    return Markup('<img alt="{}" src="data:image/png;base64,{}">').format(alt, base64.b64encode(png).decode())


@functools.cache
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("train.report", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(table=table, img=img)
    return env


# --------------------------------------------------------------------------- the page


def _summary_rows(metrics: dict) -> list[dict[str, Any]]:
    return [{"split": split, "n": m["n"], "accuracy": m["accuracy"], "macro F1": m["f1_macro"], "weighted F1": m["f1_weighted"],
             "macro AUC": m.get("roc_auc_macro", float("nan"))}
            for split in SPLITS if (m := metrics.get(split))]


def _fact_rows(metrics: dict, info: dict) -> list[dict[str, Any]]:
    facts = {k: info.get(k) for k in ("model", "data", "params", "epochs_run", "train_seconds", "total_seconds")
             if info.get(k) is not None}
    facts.update({f"inference {k}": round(v, 3) for k, v in metrics.get("timing", {}).items()})
    return [{"fact": k, "value": v} for k, v in facts.items()]


def render_report(title: str, metrics: dict, figures: Mapping[str, bytes | None], info: dict, dataset: dict | None,
                  analyses: Sequence[str] = ()) -> str:
    """The report page: the evaluation (``metrics`` as in metrics.json, ``figures`` as PNG bytes by name,
    the run's ``info``, the ``dataset`` summary) followed by the rendered ``analyses`` sections."""
    dataset_facts = [{"fact": k, "value": v} for k, v in (dataset or {}).items()
                     if k != "per_class" and not isinstance(v, (list, dict))]
    return _environment().get_template("report.html").render(
        title=title, summary=_summary_rows(metrics), facts=_fact_rows(metrics, info), figures=dict(figures),
        splits=[(split, metrics[split]) for split in SPLITS if metrics.get(split)], dataset=dataset,
        dataset_classes=(dataset or {}).get("per_class") or [], dataset_facts=dataset_facts, analyses=list(analyses),
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def write_figures(run_dir: str | Path, figures: Mapping[str, bytes | None]) -> None:
    """Store the evaluation's figures as ``figures/<name>.png`` (replacing the earlier ones)."""
    root = Path(run_dir) / FIGURES_DIR
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name, png in figures.items():
        if png:
            (root / f"{name}.png").write_bytes(png)


def render_run_report(run_dir: str | Path) -> Path:
    """Render ``report.html`` of a run from its stored evaluation, figures and analyses; returns its path."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json") or {}
    model, data = config.get("model"), str(config.get("data"))
    info = {**(_read_json(run_dir / "run.json") or {}), "model": model, "data": data}
    metrics = _read_json(run_dir / "metrics.json") or {}
    figures = {p.stem: p.read_bytes() for p in sorted((run_dir / FIGURES_DIR).glob("*.png"))}
    if not figures and any(split in metrics for split in SPLITS):
        logger.warning("%s: no %s/ (evaluated by an older version); python -m train.evaluate --run %s draws them again",
                       run_dir, FIGURES_DIR, run_dir)
    title = f"{model} on {Path(data).name or data}: {run_dir.name}"
    path = run_dir / REPORT_FILE
    path.write_text(render_report(title, metrics, figures, info, _read_json(run_dir / "dataset.json"),
                                  analysis_sections(run_dir)))
    return path


# --------------------------------------------------------------------------- analyses


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def add_analysis(run_dir: str | Path, name: str, title: str, data: Any = None, *,
                 tables: Mapping[str, Table] | None = None, images: Mapping[str, bytes | None] | None = None) -> Path:
    """Store an analysis of a run as ``analysis/<name>.json`` (its images as ``analysis/<name>/*.png``),
    replacing an earlier one of the same name, and render the run's ``report.html`` again if it has one.

    ``data``: the results (JSON-able; NumPy values are converted); ``tables``: :class:`Table` by name and
    ``images``: PNG bytes by name (None is left out), both for the template ``analysis/<name>.html``.
    Returns the path of the JSON file.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"analysis name {name!r}: use letters, digits, '_' and '-' only")
    run_dir = Path(run_dir)
    root = run_dir / ANALYSIS_DIR
    shutil.rmtree(root / name, ignore_errors=True)
    stored = {}
    for i, (key, png) in enumerate((images or {}).items()):
        if png:
            stored[key] = f"{name}/{i:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', key)}.png"
            (root / stored[key]).parent.mkdir(parents=True, exist_ok=True)
            (root / stored[key]).write_bytes(png)
    record = {"name": name, "title": title, "data": data,
              "tables": {k: Table(*t)._asdict() for k, t in (tables or {}).items()}, "images": stored}
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.json"
    path.write_text(json.dumps(record, default=_json_default) + "\n")
    if (run_dir / REPORT_FILE).is_file():
        render_run_report(run_dir)
    return path


def _render_section(root: Path, record: dict, run: dict) -> Markup:
    env = _environment()
    if "html" in record and "tables" not in record:  # stored before reports were rendered from templates
        body = Markup(record["html"])
    else:
        images = {}
        for key, rel in record["images"].items():
            if (root / rel).is_file():
                images[key] = (root / rel).read_bytes()
            else:
                logger.warning("%s: image missing; the %s section goes without it", root / rel, record["name"])
        template = env.select_template([f"analysis/{record['name']}.html", "analysis/default.html"])
        body = Markup(template.render(data=record["data"], tables=record["tables"], images=images, run=run))
    return Markup(env.get_template("section.html").render(name=record["name"], title=record["title"], body=body))


def analysis_sections(run_dir: str | Path) -> list[Markup]:
    """The rendered report sections of the analyses stored with a run (``analysis/*.json``), by name."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json") or {}
    run = {"name": run_dir.name, "model": config.get("model"), "data": config.get("data")}
    root = run_dir / ANALYSIS_DIR
    return [_render_section(root, json.loads(f.read_text()), run) for f in sorted(root.glob("*.json"))]
