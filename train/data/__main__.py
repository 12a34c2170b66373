"""``python -m train.data``: inspect and convert datasets (the command line of :mod:`train.data`).

    python -m train.data summary SPEC [--split test]
    python -m train.data kaggle-csv --from path/to/mnist --rows 42000 --out train.csv [--unlabelled]

A dataset that is missing or unusable exits with 5 (``ExitCode.INPUT``), a bad flag with 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Sequence

from train.data.dataset import SPLIT_ALIASES
from train.data.load import load_dataset
from train.data.summary import format_summary, summarize
from train.data.writers import write_kaggle_csv
from train.errors import ExitCode, UsageError, exit_codes_help, run_command

EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.INPUT)


def _size_arg(text: str) -> tuple[int, int]:
    parts = re.split(r"[x,]", text.lower())
    try:
        vals = [int(p) for p in parts]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from e
    if len(vals) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    if min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive; got {text!r}")
    return vals[0], vals[-1]


def _split_arg(text: str) -> str:
    if text.strip().lower() not in SPLIT_ALIASES:
        raise argparse.ArgumentTypeError(f"unknown split {text!r}; use 'train', 'test' or 'val'")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.data", description="Inspect and convert datasets.",
                                     epilog=exit_codes_help(EXIT_CODES),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_sum = sub.add_parser("summary", help="print per-class counts and pixel statistics",
                           epilog=exit_codes_help(EXIT_CODES), formatter_class=argparse.RawDescriptionHelpFormatter)
    p_sum.add_argument("spec", help="path or dataset name (see load_dataset)")
    p_sum.add_argument("--split", type=_split_arg, default="train")
    p_sum.add_argument("--image-size", type=_size_arg, default=None, help="N or HxW")
    p_sum.add_argument("--colour", "--color", dest="colour", choices=["grey", "gray", "rgb"], default=None)
    p_sum.add_argument("--imbalance-threshold", type=float, default=1.5)
    p_sum.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_csv = sub.add_parser("kaggle-csv", help="write a Kaggle digit-recognizer CSV from a dataset",
                           epilog=exit_codes_help(EXIT_CODES), formatter_class=argparse.RawDescriptionHelpFormatter)
    p_csv.add_argument("--from", dest="source", required=True, help="path or dataset name")
    p_csv.add_argument("--split", type=_split_arg, default="train")
    p_csv.add_argument("--rows", type=int, default=None, help="the first N samples (default: all)")
    p_csv.add_argument("--out", required=True)
    p_csv.add_argument("--unlabelled", "--unlabeled", action="store_true",
                       help="pixel columns only, like Kaggle's test.csv")
    return parser


def summary(args: argparse.Namespace) -> None:
    ds = load_dataset(args.spec, split=args.split, image_size=args.image_size, colour=args.colour)
    result = summarize(ds, imbalance_threshold=args.imbalance_threshold)
    print(json.dumps(result, indent=2) if args.json else format_summary(result))


def kaggle_csv(args: argparse.Namespace) -> None:
    ds = load_dataset(args.source, split=args.split)
    if args.rows is not None:
        if not 0 < args.rows <= len(ds):
            raise UsageError(f"{ds.source}: --rows must be in 1..{len(ds)}; got {args.rows}")
        ds = ds.subset(slice(0, args.rows))
    out = write_kaggle_csv(ds, args.out, with_label=not args.unlabelled)
    print(f"wrote {out} ({len(ds):,} rows{', unlabelled' if args.unlabelled else ''})")


COMMANDS = {"summary": summary, "kaggle-csv": kaggle_csv}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_command(lambda: COMMANDS[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
