"""``python -m train.export``: the command line of :func:`train.export.export_bundle`.

    python -m train.export --target coral                      # the latest run under runs/
    python -m train.export --target rpi --run runs/X --sparsity 0.8 --threads 4
    python -m train.export --list-targets

Exit codes are the project's one table (:class:`sdk.errors.ExitCode`); ``--help`` lists the ones
used here. A target artefact that cannot be built (exit 14) leaves no manifest.json, so the folder
is no bundle; a failed accuracy gate (exit 13) still writes the bundle, with the figures.
"""
from __future__ import annotations

import argparse
import logging
import sys

from train.data import DataError
from train.errors import ExitCode, GateError, UsageError, exit_codes_help, run_command
from train.export import ExportResult, describe_targets, export_bundle, list_targets
from train.export.options import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_FINE_TUNE_EPOCHS,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_THREADS,
    PREPROCESS_CHOICES,
)
from train.export.report import REPORT_MD, percent
from train.export.targets import get_target
from train.runs import RunError

EXIT_CODES = (
    ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.INPUT, ExitCode.BUNDLE, ExitCode.MODEL, ExitCode.GATE,
    ExitCode.ARTEFACT,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.export",
        description="Optimize a trained run (pruning, clustering, QAT, INT8) and write a model bundle for a device.",
        epilog="Targets:\n" + describe_targets() + "\n\n" + exit_codes_help(EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", help=f"export target: {', '.join(list_targets())}")
    p.add_argument("--run", help="run directory (default: the latest under --runs-dir), or a .keras model file with --data")
    p.add_argument("--runs-dir", default="runs", help="where to look for the latest run (default: runs)")
    p.add_argument("--out", help="bundle directory (default: <run>/bundles/<target>)")
    p.add_argument("--data", help="dataset spec to calibrate and evaluate on (default: the run's own data)")
    p.add_argument("--sparsity", type=float, help="prune to this share of zero weights, e.g. 0.8")
    p.add_argument("--qat", action="store_true", help="quantization-aware training before conversion (INT8 targets)")
    p.add_argument("--clustering", type=int, metavar="N", help="cluster weights to N shared values per kernel, e.g. 16")
    p.add_argument("--calibration-samples", type=int, metavar="N",
                   help="representative images for INT8 calibration, stratified from the training split "
                        f"(default {DEFAULT_CALIBRATION_SAMPLES})")
    p.add_argument("--io-dtype", help="input/output type of a full-integer model: uint8 (default) or int8")
    p.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP,
                   help=f"accuracy gate in percentage points below the float model (default {DEFAULT_MAX_ACCURACY_DROP})")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"interpreter threads recorded for the device (default {DEFAULT_THREADS})")
    p.add_argument("--fine-tune-epochs", type=int, default=DEFAULT_FINE_TUNE_EPOCHS,
                   help="epochs of fine-tuning for pruning (clustering/QAT use half)")
    p.add_argument("--name", help="model name in the manifest (default: <model>-<data>)")
    p.add_argument("--version", help="model version in the manifest (default: the run directory's name)")
    p.add_argument("--preprocess", choices=PREPROCESS_CHOICES,
                   help="device preprocessing written to the manifest (default: 'digit' for MNIST-like digits, else 'plain')")
    p.add_argument("--list-targets", action="store_true", help="list the targets and what they accept, then exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_targets:
        print(describe_targets())
        return ExitCode.OK
    return run_command(lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    if not args.target:
        raise UsageError(f"--target is required. Valid targets:\n{describe_targets()}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = export_bundle(
            args.target, args.run, args.out,
            sparsity=args.sparsity, qat=args.qat, clustering=args.clustering, calibration_samples=args.calibration_samples,
            max_accuracy_drop=args.max_accuracy_drop, threads=args.threads, io_dtype=args.io_dtype, data=args.data,
            fine_tune_epochs=args.fine_tune_epochs, name=args.name, version=args.version, preprocess=args.preprocess,
            runs_dir=args.runs_dir,
        )
    except (RunError, DataError) as e:
        if isinstance(getattr(e, "exit_code", None), int):
            raise  # run_command reports it with its own code
        # Errors of train.runs / train.data that carry no exit_code (yet): what they mean here.
        print(f"error: {e}", file=sys.stderr)
        return ExitCode.BUNDLE if isinstance(e, RunError) else ExitCode.INPUT
    print(_summary(result))
    if not result.passed:
        raise GateError(f"accuracy gate failed (max drop {args.max_accuracy_drop} pts):\n" + "\n".join(
            f"  {f['file']} on {f['split']}: {f['exported']:.2%} vs float {f['float']:.2%} (-{f['drop_pts']:.2f} pts)"
            for f in result.failures))
    return ExitCode.OK


def _summary(result: ExportResult) -> str:
    r = result.report
    lines = [f"bundle: {result.bundle_dir}  (target {r['target']}, sha256 {result.manifest.sha256[:12]}...)"]
    fl = r["float"]["accuracy"]
    lines.append(f"  float model              val {percent(fl.get('validation'))}  test {percent(fl.get('test'))}")
    for a in r["artefacts"]:
        acc = a["accuracy"]
        lines.append(
            f"  {a['file']:<26} val {percent(acc.get('validation'))}  test {percent(acc.get('test'))}  "
            f"{a['size_bytes']:,} B (gzip {a['gzip_bytes']:,})  p50 {a['latency'].get('p50_ms')} ms"
        )
    for builder in get_target(r["target"]).builders:
        if builder.summary is not None:
            lines += builder.summary(r)
    lines.append(f"  sparsity {r['sparsity']['overall']:.1%}; report: {result.bundle_dir / REPORT_MD}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
