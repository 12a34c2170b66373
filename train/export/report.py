"""The export report: ``export_report.json`` (every figure) and ``export_report.md`` (a short read).

The report starts with what was exported from what, with which options, on which machine; the
export steps add their blocks (calibration, float, sparsity, optimizations, the target's own
sections, artefacts, gate). A target's sections are rendered by its builders
(``ArtefactBuilder.markdown``), so this module knows no target by name.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from train.export.options import ExportOptions
from train.export.targets import TargetSpec, get_target
from train.runs import Run

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


def percent(v: float | None) -> str:
    """An accuracy (0..1) as ``98.76%``, ``-`` when there is none."""
    return "-" if v is None else f"{v * 100:.2f}%"


def start_report(spec: TargetSpec, source: Run, options: ExportOptions, measuring_threads: int) -> dict[str, Any]:
    """The head of the report: target, source run, options, this machine, labels."""
    return {
        "target": spec.name,
        "target_description": spec.description,
        "source_run": str(source.path),
        "model": source.config.model,
        "data": source.config.data,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": options.to_report(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "measuring_threads": measuring_threads},
        "labels": source.class_names,
    }


def write_reports(bundle: Path, report: dict) -> None:
    """``export_report.json`` and ``export_report.md`` into ``bundle``."""
    (bundle / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (bundle / REPORT_MD).write_text(report_markdown(report))


def report_markdown(report: dict) -> str:
    """A short human-readable export report."""
    fl = report["float"]
    lines = [
        f"# Export report: {report['model']} -> {report['target']}",
        "",
        f"Run `{report['source_run']}`, data `{report['data']}`, written {report['created']}.",
        f"Options: {', '.join(f'{k}={v}' for k, v in report['options'].items() if v not in (None, False))}.",
        "",
        "| artefact | quantization | size | gzip | x float | val acc | test acc | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| Keras float (reference) | float32 | {fl['tflite_float32_bytes']:,} (tflite) | {fl['tflite_float32_gzip_bytes']:,} | 1.00 | "
        f"{percent(fl['accuracy'].get('validation'))} | {percent(fl['accuracy'].get('test'))} | | |",
    ]
    for a in report["artefacts"]:
        lat = a.get("latency", {})
        lines.append(
            f"| {a['file']} | {a['quantization']} | {a['size_bytes']:,} | {a['gzip_bytes']:,} | {a['size_vs_float']:.2f} | "
            f"{percent(a['accuracy'].get('validation'))} | {percent(a['accuracy'].get('test'))} | "
            f"{lat.get('p50_ms', '-')} | {lat.get('p95_ms', '-')} |"
        )
    lines += ["", f"Latency: batch 1, {report['machine']['measuring_threads']} thread(s) on this host ({report['machine']['platform']})."]
    sp = report.get("sparsity", {})
    lines += ["", f"Sparsity (Conv/Dense kernels): {sp.get('overall', 0):.1%} overall; " +
              ", ".join(f"{layer['layer']} {layer['sparsity']:.1%}" for layer in sp.get("layers", []))]
    for step, info in report.get("optimizations", {}).items():
        acc = info.get("float_accuracy")
        if acc:
            lines.append(f"Float model after {step}: val {percent(acc.get('validation'))}, test {percent(acc.get('test'))}.")
    # per-class deltas of the worst class, per artefact
    lines += ["", "Per-class accuracy change vs float (percentage points, worst classes):"]
    for a in report["artefacts"]:
        for split, d in a["per_class_delta_pts"].items():
            worst = sorted(((v, k) for k, v in d.items() if v is not None))[:3]
            lines.append(f"- {a['file']} {split}: " + ", ".join(f"{k} {v:+.2f}" for v, k in worst))
    for builder in get_target(report["target"]).builders:
        if builder.markdown is not None:
            lines += builder.markdown(report)
    gate = report["gate"]
    lines += ["", f"Accuracy gate (max drop {gate['max_accuracy_drop_pts']} pts): {'PASSED' if gate['passed'] else 'FAILED'}"]
    for f in gate["failures"]:
        lines.append(f"- {f['file']} on {f['split']}: {percent(f['exported'])} vs float {percent(f['float'])} (-{f['drop_pts']:.2f} pts)")
    return "\n".join(lines) + "\n"
