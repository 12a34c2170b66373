"""Label the samples a collector stored: keyboard-driven, one pending sample at a time.

    python -m train.label feedback/                      # label pending samples
    python -m train.label feedback/ --import labels.csv  # bulk labels (columns id|image, label)
    python -m train.label feedback/ --summary            # counts per status and per label
    python -m train.label feedback/ --export-folder out/ # labelled samples as an image folder

Each sample is shown with its id, device, model version, the reasons it was sent, the model's
top-k guesses, and the model input (or the frame) as terminal art; ``--window`` also opens an
OpenCV window when a display exists. Then one line is read from stdin, so a script can drive it.
A CSV import that leaves bad rows out (the good ones are applied) exits 5, as does a folder that
is not a feedback store, an unreadable CSV or an export folder that is not empty.
The library is :mod:`train.loop.label`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from train.errors import ExitCode, InputError, exit_codes_help, run_command
from train.loop.label import KEYS, label_session, summary
from train.loop.store import FeedbackStore

EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.label", description=__doc__,
                                epilog=f"keys in a labelling session:\n{KEYS}\n\n{exit_codes_help(EXIT_CODES)}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path, help="feedback store folder (written by python -m train.collect)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--import", dest="import_csv", type=Path, metavar="CSV",
                      help="apply labels from a CSV with columns id (or image) and label")
    mode.add_argument("--summary", action="store_true", help="print counts per status and per label")
    mode.add_argument("--export-folder", type=Path, metavar="OUT",
                      help="write the labelled samples as OUT/<label>/<id>.png for train.data.load_dataset")
    p.add_argument("--by", default="cli", help="who labels (stored with each label; default: cli)")
    p.add_argument("--limit", type=int, help="label at most this many samples")
    p.add_argument("--window", action="store_true", help="also show each sample in an OpenCV window")
    return p


def _run(args: argparse.Namespace, inp: TextIO, out: TextIO) -> int:
    if not (args.store / "index.sqlite").is_file():
        raise InputError(f"{args.store}: not a feedback store (no index.sqlite); collect into it with python -m train.collect")
    with FeedbackStore(args.store) as store:
        if args.summary:
            print(summary(store), file=out)
        elif args.import_csv:
            report = store.import_labels_csv(args.import_csv, by=args.by)
            print(f"{args.import_csv}: {report.applied} labels applied, {len(report.errors)} rows left out", file=out)
            for err in report.errors:
                print(f"  {err}", file=out)
            return ExitCode.INPUT if report.errors else ExitCode.OK
        elif args.export_folder:
            counts = store.export_folder(args.export_folder)
            print(f"{args.export_folder}: {sum(counts.values())} images in {len(counts)} label folders", file=out)
        else:
            tally = label_session(store, inp, out, by=args.by, limit=args.limit, window=args.window)
            print(f"\n{tally}", file=out)
    return ExitCode.OK


def main(argv: list[str] | None = None, inp: TextIO | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args, inp or sys.stdin, out or sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
