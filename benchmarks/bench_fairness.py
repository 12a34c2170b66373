"""Fairness benchmark for issue 6 (figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_fairness.py                  # 2,000 MNIST test digits + all 1,593 Semeion
    python benchmarks/bench_fairness.py --mnist 5000 --seed 1

Pools digits from two sources into one Kaggle-format CSV whose ``source`` column is the group:
MNIST test digits (stratified sample) and the UCI Semeion digits (other writers and scanner, made
MNIST-like at 28x28 by ``load_dataset``). Then ``train.fairness`` judges the LeNet-5 trained on
MNIST only (the ``lenet5_mnist`` run of bench_train.py, trained here when it is missing) per
source: accuracy / F1 gap, per-class recall and the confusion matrix of each group. The section
lands in that run's report.html; the numbers in ``benchmarks/results/fairness.json``.
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
POOLED_CSV = HERE / "cache" / "fairness" / "mnist_semeion.csv"


def base_run() -> Path:
    if not (BASE_RUN / "model.keras").is_file():
        from bench_train import lenet5_mnist

        lenet5_mnist()
    return BASE_RUN


def write_pooled_csv(parts: dict, path: Path) -> Path:
    """Kaggle digit CSV (``label,pixel0..pixel783,source``) of several labelled Datasets, by name."""
    import pandas as pd

    frames = []
    for name, ds in parts.items():
        frame = pd.DataFrame(ds.x.reshape(len(ds), -1), columns=[f"pixel{i}" for i in range(ds.x[0].size)])
        frame.insert(0, "label", ds.y)
        frame["source"] = name
        frames.append(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mnist", type=int, default=2000, help="MNIST test digits to pool (stratified)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from train.analysis.fairness import evaluate_fairness, format_table
    from train.data import load_dataset, stratified_sample

    mnist = stratified_sample(load_dataset(str(SHARED / "mnist"), split="test"), args.mnist, seed=args.seed)
    semeion = load_dataset(str(SHARED / "semeion" / "semeion.data"))
    csv = write_pooled_csv({"mnist": mnist, "semeion": semeion}, POOLED_CSV)
    t = time.perf_counter()
    result = evaluate_fairness(base_run(), str(csv), "source")
    secs = time.perf_counter() - t
    print(format_table(result))
    out = {"command": "python benchmarks/bench_fairness.py " + " ".join(sys.argv[1:]),
           "cli": f"python -m train.fairness --run {BASE_RUN} --data {csv} --groups source",
           "seconds": round(secs, 1), **result,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fairness.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{secs:.1f} s; wrote {RESULTS / 'fairness.json'} and the Fairness section of {BASE_RUN / 'report.html'}")


if __name__ == "__main__":
    main()
