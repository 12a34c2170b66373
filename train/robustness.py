"""``python -m train.robustness``: the command line of :mod:`train.analysis.robustness`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from train.analysis import robustness
from train.analysis.robustness import ATTACKS, CORRUPTIONS, DEFAULT_EPSILONS, DEFAULT_PGD_STEPS, DEFAULT_SAMPLES, SEVERITIES
from train.errors import ExitCode
from train.report import EXIT_CODES as COMMON_EXIT_CODES
from train.report import run_parser, run_report_command

EXIT_CODES = (*COMMON_EXIT_CODES, ExitCode.MODEL, ExitCode.RUNTIME)


def build_parser() -> argparse.ArgumentParser:
    p = run_parser("python -m train.robustness", robustness.__doc__, EXIT_CODES)
    p.add_argument("--bundle", help="bundle directory from python -m train.export, to measure its TFLite model too")
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), metavar="NAME",
                   help=f"any of {', '.join(CORRUPTIONS)} (default: all)")
    p.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), metavar="S", help="severities 1..5 (default: all)")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), metavar="NAME", help=f"any of {', '.join(ATTACKS)} (default: all)")
    p.add_argument("--epsilons", nargs="+", type=float, default=list(DEFAULT_EPSILONS), metavar="EPS",
                   help="L-inf attack sizes in pixel units 0..255 (default: 0 2 4 8 16)")
    p.add_argument("--pgd-steps", type=int, default=DEFAULT_PGD_STEPS, help=f"PGD iterations (default {DEFAULT_PGD_STEPS})")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"test images, stratified by class (default {DEFAULT_SAMPLES}; the whole split if larger)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def _robustness(args: argparse.Namespace) -> None:
    from train.runs import RunError, load_run

    try:
        run = load_run(args.run, args.runs_dir)
    except RunError as e:
        raise type(e)(f"--run: {e}") from e
    data, path = robustness.robustness_report(
        run, args.bundle, corruptions=args.corruptions, severities=args.severities, attacks=args.attacks,
        epsilons=args.epsilons, pgd_steps=args.pgd_steps, samples=args.samples, seed=args.seed,
    )
    print(robustness.format_table(data))
    print(f"data: {path}\nreport: {Path(data['run']) / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_report_command(lambda: _robustness(args), log_level=logging.INFO if args.verbose else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
