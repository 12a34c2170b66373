"""Label the samples a collector stored: keyboard-driven, one pending sample at a time.

:func:`label_session` shows each pending sample with its id, device, model version, the reasons
it was sent, the model's top-k guesses, and the model input (or the frame) as terminal art
(``window=True`` also opens an OpenCV window when a display exists), then reads one line, so a
script can drive it (the keys are in :data:`KEYS`, and ``?`` shows them). The command line is
``python -m train.label`` (train/label.py).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TextIO

import cv2
import numpy as np

from train.loop.samples import FeedbackError, Sample
from train.loop.store import FeedbackStore

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


def shown(s: Sample) -> tuple[str, np.ndarray]:
    """What to show of a sample, in OpenCV's channel order (BGR or HxW grey): the model input when
    sent, else the frame (its region's part, for a region sample whose box fits the frame)."""
    img = s.model_input()
    if img is not None:
        return "model input", cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    if s.region_box is not None:
        try:
            return f"region {s.region} of the frame", s.region_image()
        except FeedbackError:
            pass
    return "frame", s.image()


def describe(s: Sample, n: int, total: int, labels: list[str]) -> str:
    guesses = ", ".join(f"{c['label']} {c['score']:.2f}" for c in s.top_k) or "(none)"
    what, img = shown(s)
    choices = " ".join(labels) if labels == [str(i) for i in range(len(labels))] else \
        " ".join(f"{i}:{x}" for i, x in enumerate(labels))
    region = f"region: {s.region} {list(s.region_box)} (x, y, w, h)\n" if s.region is not None else ""
    return (f"\n[{n}/{total}] sample {s.id}  device {s.device}  model {s.model_name} v{s.model_version}\n"
            f"{region}reasons: {', '.join(s.reasons)}\nmodel's guesses: {guesses}\n"
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
        _, img = shown(s)
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
