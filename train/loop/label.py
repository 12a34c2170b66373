"""Label the samples a collector stored: keyboard-driven, one pending sample at a time.

    python -m train.label feedback/                      # label pending samples
    python -m train.label feedback/ --import labels.csv  # bulk labels (columns id|image, label)
    python -m train.label feedback/ --summary            # counts per status and per label
    python -m train.label feedback/ --export-folder out/ # labelled samples as an image folder

Each sample is shown with its id, device, model version, the reasons it was sent, the model's
top-k guesses, and the model input (or the frame) as terminal art; ``--window`` also opens an
OpenCV window when a display exists. Then one line is read from stdin, so a script can drive it
(the keys are in :data:`KEYS`, and ``?`` shows them).

Exit codes: 0 ok, 1 a CSV import left bad rows out (the good ones are applied), 2 bad arguments
(not a feedback store, unreadable CSV, export folder not empty).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from train.loop.store import FeedbackError, FeedbackStore, Sample

KEYS = """\
  Enter   accept the model's guess
  LABEL   the right label (or its index in the label list, when that is not a label itself)
  s       skip (not labelled; kept until evicted)
  u       undo the last decision (that sample is pending again and shown again)
  q       quit (every decision is already saved); the end of input also quits
  ?       this help"""
RAMP = " ░▒▓█"


def terminal_art(img: np.ndarray, max_width: int = 40) -> str:
    """Grey levels as block characters, two per pixel (terminal cells are about twice as tall as wide)."""
    grey = img if img.ndim == 2 else cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    if w > max_width:
        grey = cv2.resize(grey, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    levels = (grey.astype(np.uint16) * len(RAMP) // 256).clip(0, len(RAMP) - 1)
    return "\n".join("".join(RAMP[v] * 2 for v in row) for row in levels)


def describe(s: Sample, n: int, total: int, labels: list[str]) -> str:
    guesses = ", ".join(f"{c['label']} {c['score']:.2f}" for c in s.top_k) or "(none)"
    img = s.model_input()
    what = "model input" if img is not None else "frame"
    img = img if img is not None else s.image()
    choices = " ".join(labels) if labels == [str(i) for i in range(len(labels))] else \
        " ".join(f"{i}:{x}" for i, x in enumerate(labels))
    return (f"\n[{n}/{total}] sample {s.id}  device {s.device}  model {s.model_name} v{s.model_version}\n"
            f"reasons: {', '.join(s.reasons)}\nmodel's guesses: {guesses}\n"
            f"{what} ({img.shape[1]}x{img.shape[0]}):\n{terminal_art(img)}\nlabels: {choices}")


@dataclass
class Tally:
    accepted: int = 0
    corrected: int = 0
    skipped: int = 0
    undone: int = 0
    left: int = 0

    def __str__(self) -> str:
        return (f"{self.accepted + self.corrected} labelled ({self.accepted} accepted, {self.corrected} corrected), "
                f"{self.skipped} skipped, {self.undone} undone, {self.left} left pending")


def _resolve(text: str, labels: list[str]) -> str | None:
    """A label typed as itself, or as its index in ``labels``."""
    if text in labels:
        return text
    if text.isdigit() and int(text) < len(labels):
        return labels[int(text)]
    return None


class _Window:
    """An OpenCV window showing the current sample, when asked for and a display exists."""

    def __init__(self, wanted: bool, out: TextIO):
        has_display = sys.platform != "linux" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        self.on = wanted and has_display
        if wanted and not has_display:
            print("--window: no display (DISPLAY is not set); showing terminal art only", file=out)
        self.out = out

    def show(self, s: Sample) -> None:
        if not self.on:
            return
        img = s.model_input()
        img = img if img is not None else s.image()
        scale = max(1, 280 // max(img.shape[:2]))
        try:
            cv2.imshow("train.label", cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST))
            cv2.waitKey(1)
        except cv2.error as e:
            print(f"--window: OpenCV cannot open a window ({e.msg.strip()}); terminal art only", file=self.out)
            self.on = False

    def close(self) -> None:
        if self.on:
            cv2.destroyAllWindows()


def label_session(store: FeedbackStore, inp: TextIO = sys.stdin, out: TextIO = sys.stdout, *,
                  by: str = "cli", limit: int | None = None, window: bool = False) -> Tally:
    """Walk the pending samples, reading one decision per line from ``inp``; see the module doc."""
    queue = store.pending(limit)
    labels = store.labels()
    tally = Tally()
    history: list[tuple[int, str]] = []  # (queue index, what was done)
    win = _Window(window, out)
    if not queue:
        print("nothing pending", file=out)
    print(f"keys:\n{KEYS}", file=out)
    i = 0
    try:
        while i < len(queue):
            s = queue[i]
            try:
                text = describe(s, i + 1, len(queue), labels)
            except FeedbackError as e:  # evicted by a collector since the queue was read
                print(f"sample {s.id} is gone ({e}); next", file=out)
                i += 1
                continue
            win.show(s)
            print(text, file=out)
            while True:
                default = f" [Enter = {s.predicted}]" if s.predicted is not None else ""
                print(f"label{default}> ", end="", file=out, flush=True)
                line = inp.readline()
                if not line:  # end of input
                    line = "q"
                cmd = line.strip()
                try:
                    if cmd == "q":
                        tally.left = len(queue) - i
                        return tally
                    if cmd == "?":
                        print(KEYS, file=out)
                        continue
                    if cmd == "u":
                        if not history:
                            print("nothing to undo", file=out)
                            continue
                        i, done = history.pop()
                        store.reset(queue[i].id)
                        setattr(tally, done, getattr(tally, done) - 1)
                        tally.undone += 1
                        print(f"undone: sample {queue[i].id} is pending again", file=out)
                        break
                    if cmd == "s":
                        store.skip(s.id, by=by)
                        done = "skipped"
                    elif cmd == "":
                        if s.predicted is None:
                            print("the model made no guess for this sample; type a label", file=out)
                            continue
                        store.set_label(s.id, s.predicted, by=by)
                        done = "accepted"
                    else:
                        label = _resolve(cmd, labels)
                        if label is None:
                            print(f"unknown label {cmd!r}; valid: {', '.join(labels)} (or an index); ? = help",
                                  file=out)
                            continue
                        store.set_label(s.id, label, by=by)
                        done = "accepted" if label == s.predicted else "corrected"
                except FeedbackError as e:  # evicted meanwhile, or a guess outside the store's labels
                    print(f"error: {e}", file=out)
                    continue
                setattr(tally, done, getattr(tally, done) + 1)
                history.append((i, done))
                i += 1
                break
        return tally
    finally:
        win.close()


def summary(store: FeedbackStore) -> str:
    c = store.counts()
    lines = [f"{store.path}: {c['total']} samples ({c['bytes'] / 1e6:.1f} MB): {c['pending']} pending, "
             f"{c['labelled']} labelled, {c['skipped']} skipped"]
    if c["labels"]:
        lines.append("labelled per label:")
        width = max(len(x) for x in c["labels"])
        lines += [f"  {label:<{width}}  {n}" for label, n in c["labels"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, inp: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    p = argparse.ArgumentParser(prog="python -m train.label", description=__doc__.split("\n\n")[0],
                                epilog=f"keys in a labelling session:\n{KEYS}\n\n" + __doc__.split("\n\n")[-1],
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
    args = p.parse_args(argv)
    if not (args.store / "index.sqlite").is_file():
        p.error(f"{args.store}: not a feedback store (no index.sqlite); collect into it with python -m train.collect")
    with FeedbackStore(args.store) as store:
        try:
            if args.summary:
                print(summary(store), file=out)
            elif args.import_csv:
                report = store.import_labels_csv(args.import_csv, by=args.by)
                print(f"{args.import_csv}: {report.applied} labels applied, {len(report.errors)} rows left out",
                      file=out)
                for err in report.errors:
                    print(f"  {err}", file=out)
                return 1 if report.errors else 0
            elif args.export_folder:
                counts = store.export_folder(args.export_folder)
                print(f"{args.export_folder}: {sum(counts.values())} images in {len(counts)} label folders", file=out)
            else:
                tally = label_session(store, inp, out, by=args.by, limit=args.limit, window=args.window)
                print(f"\n{tally}", file=out)
        except FeedbackError as e:
            p.error(str(e))
    return 0
