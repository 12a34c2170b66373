"""Evaluate a trained run: metrics, figures and its report.html (the library is :mod:`train.report`).

    python -m train.evaluate                         # the latest run, on its validation and test splits
    python -m train.evaluate --run runs/X --data other.csv   # the run's model on another labelled set
    python -m train.evaluate --run runs/X --predict test.csv --out submission.csv   # Kaggle submission

Every training run is evaluated when it ends; this redoes it (and renders the report again, with
every analysis stored in the run).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from train.errors import ExitCode
from train.report import EXIT_CODES as COMMON_EXIT_CODES
from train.report import evaluate_on, evaluate_run, predict_to_submission, run_parser, run_report_command

EXIT_CODES = (*COMMON_EXIT_CODES, ExitCode.MODEL)


def build_parser() -> argparse.ArgumentParser:
    p = run_parser("python -m train.evaluate", __doc__, EXIT_CODES)
    p.add_argument("--data", help="evaluate on this labelled dataset instead of the run's splits")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split of --data to use")
    p.add_argument("--predict", metavar="CSV", help="unlabelled Kaggle test CSV to predict")
    p.add_argument("--out", default="submission.csv", help="where --predict writes ImageId,Label")
    return p


def _evaluate(args: argparse.Namespace) -> None:
    from train.runs import latest_run

    run_dir = Path(args.run) if args.run else latest_run(args.runs_dir)
    if args.predict:
        print(predict_to_submission(run_dir, args.predict, args.out))
    elif args.data:
        m = evaluate_on(run_dir, args.data, args.split)
        print(json.dumps({k: v for k, v in m.items() if k not in ("confusion_matrix", "per_class")}, indent=2))
    else:
        m = evaluate_run(run_dir)
        for split in ("validation", "test"):
            if split in m:
                print(f"{split:<10} accuracy {m[split]['accuracy']:.4f}  macro F1 {m[split]['f1_macro']:.4f}")
        print(f"report: {run_dir / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_report_command(lambda: _evaluate(args), log_level=logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
