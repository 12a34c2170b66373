"""Feedback-loop benchmark for issue 5 (figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_feedback.py                 # all sample counts and variants
    python benchmarks/bench_feedback.py --counts 50 200 --variants replay none

A LeNet-5 trained on MNIST (the ``lenet5_mnist`` run of bench_train.py, trained here when it is
missing) meets a shifted domain: the UCI Semeion handwritten digits (other writers, scanned as
16x16 binary images, brought to MNIST's 28x28 format the way MNIST's makers did: box-fit to
20x20, centred by mass). Semeion is split once (stratified, seed 0) into a labelling pool (40%)
and a shifted-domain test set (60%) no model ever trains on.

For each count of labelled samples (drawn stratified from the pool) and each variant the base
model is fine-tuned with ``train.loop.retrain.finetune`` (same epochs and steps for every variant):

- ``replay``: feedback mixed with replayed MNIST training images (rehearsal), the default
- ``none``:   feedback alone (naive fine-tuning: what forgetting looks like)
- ``ewc``:    feedback alone with elastic weight consolidation (no stored old data needed)

and judged on the Semeion test set and the MNIST 10k test set. Writes
``benchmarks/results/feedback.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHARED = Path(os.environ.get("EDGECLF_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
RESULTS = HERE / "results"
BASE_RUN = HERE / "cache" / "runs" / "lenet5_mnist"
VARIANTS = ("replay", "none", "ewc")
EWC_LAMBDA = 1e6


def base_run() -> Path:
    if not (BASE_RUN / "model.keras").is_file():
        from bench_train import lenet5_mnist

        lenet5_mnist()
    return BASE_RUN


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", nargs="+", type=int, default=[50, 100, 200, 500])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from train._tf import keras
    from train.data import load_dataset, stratified_sample, stratified_split
    from train.loop.retrain import RetrainSettings, accuracy, epoch_size, finetune
    from train.runs import load_run

    run = load_run(base_run())
    splits = run.splits()
    mnist_train, mnist_test = splits["train"], splits["test"]
    sem = load_dataset(str(SHARED / "semeion" / "semeion.data"))
    parts = stratified_split(sem, val_fraction=0.6, seed=args.seed)
    pool, sem_test = parts["train"], parts["val"]
    if max(args.counts) > len(pool):
        p.error(f"--counts at most {len(pool)} (the labelling pool)")

    base = keras.models.load_model(run.model_path)
    ref = {"mnist_test": accuracy(base, mnist_test), "semeion_test": accuracy(base, sem_test)}
    print(f"base model: MNIST test {ref['mnist_test']:.4f}, Semeion test {ref['semeion_test']:.4f} "
          f"(pool {len(pool)}, Semeion test {len(sem_test)})", flush=True)

    rows = []
    for n in args.counts:
        labelled = stratified_sample(pool, n, seed=args.seed)
        for variant in args.variants:
            s = RetrainSettings(seed=args.seed, ewc=EWC_LAMBDA if variant == "ewc" else 0.0)
            replay = None
            if variant == "replay":
                size = epoch_size(n, s)
                replay = stratified_sample(mnist_train, size - int(round(s.feedback_share * size)), seed=args.seed)
            model = keras.models.load_model(run.model_path)
            t = time.perf_counter()
            finetune(model, labelled, replay, s, fisher_data=mnist_train)
            secs = time.perf_counter() - t
            row = {"labelled": n, "variant": variant, "semeion_test": accuracy(model, sem_test),
                   "mnist_test": accuracy(model, mnist_test), "fit_seconds": round(secs, 1),
                   "replay_images": len(replay) if replay is not None else 0}
            row["semeion_gain_pt"] = round((row["semeion_test"] - ref["semeion_test"]) * 100, 2)
            row["mnist_drop_pt"] = round((ref["mnist_test"] - row["mnist_test"]) * 100, 2)
            rows.append(row)
            print(f"n={n:4d} {variant:7s} Semeion {row['semeion_test']:.4f} ({row['semeion_gain_pt']:+.2f} pt)  "
                  f"MNIST {row['mnist_test']:.4f} (-{row['mnist_drop_pt']:.2f} pt)  {secs:.0f} s", flush=True)

    out = {"command": "python benchmarks/bench_feedback.py " + " ".join(sys.argv[1:]), "base_run": str(run.path),
           "base": ref, "pool": len(pool), "semeion_test_n": len(sem_test), "mnist_test_n": len(mnist_test),
           "settings": {**RetrainSettings().__dict__, "ewc_lambda": EWC_LAMBDA}, "rows": rows,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "feedback.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
