"""``python -m train.fairness``: the command line of :mod:`train.analysis.fairness`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from train.analysis import fairness
from train.errors import ExitCode
from train.report import EXIT_CODES as COMMON_EXIT_CODES
from train.report import run_parser, run_report_command

EXIT_CODES = (*COMMON_EXIT_CODES, ExitCode.MODEL)


def build_parser() -> argparse.ArgumentParser:
    p = run_parser("python -m train.fairness", fairness.__doc__, EXIT_CODES)
    p.add_argument("--data", required=True, help="labelled dataset to evaluate (see train.data.load_dataset)")
    p.add_argument("--split", default="test", help="split of --data where it has splits (default: test)")
    p.add_argument("--groups", required=True, metavar="COLUMN_OR_FILE",
                   help="CSV column of --data holding the group, or a side file (.csv/.txt/.npy)")
    p.add_argument("--min-group-size", type=int, default=fairness.MIN_GROUP_SIZE,
                   help=f"warn about groups smaller than this (default {fairness.MIN_GROUP_SIZE})")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return p


def _fairness(args: argparse.Namespace) -> None:
    result = fairness.evaluate_fairness(args.run, args.data, args.groups, args.split, args.min_group_size, args.runs_dir)
    print(json.dumps(result, indent=2) if args.json else fairness.format_table(result))
    if not args.json:
        print(f"\nreport: {Path(result['run']) / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_report_command(lambda: _fairness(args), log_level=logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
