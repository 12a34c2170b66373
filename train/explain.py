"""``python -m train.explain``: the command line of :mod:`train.analysis.explain`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from train.analysis import explain
from train.errors import ExitCode
from train.report import EXIT_CODES as COMMON_EXIT_CODES
from train.report import run_parser, run_report_command

EXIT_CODES = (*COMMON_EXIT_CODES, ExitCode.MODEL)


def build_parser() -> argparse.ArgumentParser:
    p = run_parser("python -m train.explain", explain.__doc__, EXIT_CODES)
    p.add_argument("--samples", type=int, default=16, help="images per gallery (default 16)")
    p.add_argument("--misclassified", action="store_true", help="add a gallery of the most confident mistakes")
    p.add_argument("--layer", help="layer for Grad-CAM (default: the last convolution)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--smoothgrad", type=int, default=0, metavar="N", help="SmoothGrad over N noisy copies (0: off)")
    return p


def _explain(args: argparse.Namespace) -> None:
    data = explain.explain_run(args.run, args.samples, args.misclassified, args.layer, args.split, args.smoothgrad,
                               args.runs_dir)
    for g in data["galleries"]:
        print(f"{g['title']}: {len(g['samples'])} images")
    print(f"Grad-CAM layer {data['layer']}; report: {Path(data['run']) / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_report_command(lambda: _explain(args), log_level=logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
