"""``python -m train.crossval``: the command line of :mod:`train.analysis.crossval`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from train.analysis import crossval
from train.errors import ExitCode, exit_codes_help
from train.report import EXIT_CODES as COMMON_EXIT_CODES
from train.report import run_report_command

EXIT_CODES = (*COMMON_EXIT_CODES, ExitCode.CONFIG)


def build_parser() -> argparse.ArgumentParser:
    from train.train import build_parser as train_parser

    p = train_parser()
    p.prog = "python -m train.crossval"
    p.description = crossval.__doc__
    p.epilog = exit_codes_help(EXIT_CODES)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", help="output directory (default: runs/cv-MODEL-TIME)")
    p.add_argument("--run", help="cross-validate this run's config (flags still override it) and add the "
                                 "result to its report.html")
    return p


def _crossval(args: argparse.Namespace) -> None:
    from train.runs import RunError
    from train.train import config_from_args

    if args.run:
        if not (Path(args.run) / "config.json").is_file():
            raise RunError(f"--run {args.run}: not a training run (no config.json)")
        args.config = str(Path(args.run) / "config.json")
    result = crossval.cross_validate(config_from_args(args), folds=args.folds, out_dir=args.out)
    print(crossval.format_result(result))
    print(f"written: {Path(result['out_dir']) / 'crossval.json'}")
    if args.run:
        crossval.crossval_report(args.run, result)
        print(f"added to {Path(args.run) / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.run and args.config:
        p.error("--run and --config both give the base config; use one")
    return run_report_command(lambda: _crossval(args), log_level=logging.WARNING if args.quiet else logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
