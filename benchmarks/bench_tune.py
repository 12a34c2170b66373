"""Hyperparameter search benchmark for issue 6 (figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_tune.py                       # LeNet-5, 10k MNIST images, 12 TPE vs 12 random trials
    python benchmarks/bench_tune.py --trials 6 --train-limit 3000

Both searches run ``train.analysis.tune.tune`` on the same base config over seed 001's Table III space
(learning rate, batch size, LeNet-5 width and dropout; epochs fixed so every trial costs the
same), with the same seed and the median pruner. The best config of each is then retrained with
full evaluation (``--train-best``) and scored on the official 10k MNIST test set, which no trial
sees. Writes ``benchmarks/results/tune.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from train.config import TrainConfig  # noqa: E402

SHARED = Path(os.environ.get("EDGECLF_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
RESULTS = HERE / "results"


def main() -> int:
    from train.analysis.tune import default_space, format_result, tune

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()

    base = TrainConfig(model="lenet5", data=str(SHARED / "mnist"), train_limit=args.train_limit, epochs=args.epochs,
                       seed=args.seed, runs_dir=str(HERE / "cache" / "tune_runs"), tensorboard=False, verbose=0)
    space, notes = default_space("lenet5")
    del space["epochs"]  # fixed: every trial trains args.epochs epochs
    rows = []
    for sampler in args.samplers:
        result = tune(base, space, trials=args.trials, sampler=sampler, pruner="median", notes=notes,
                      out_dir=HERE / "cache" / "tune" / sampler, keep="best", train_best=True)
        print(format_result(result), flush=True)
        states = [t["state"] for t in result["trials"]]
        rows.append({
            "sampler": sampler, "trials": len(states), "complete": states.count("complete"),
            "pruned": states.count("pruned"), "failed": states.count("failed"), "search_seconds": result["seconds"],
            "epochs_trained": sum(t["epochs_run"] for t in result["trials"]),
            "best_trial": result["best"]["trial"], "best_val_accuracy": round(result["best"]["value"], 4),
            "best_params": result["best"]["params"], "importance": result["importance"],
            "retrained_test_accuracy": result["best_run"]["test_accuracy"],
        })
    print(f"\nLeNet-5, {args.train_limit} MNIST training images, {args.epochs} epochs/trial, {args.trials} trials, seed {args.seed}")
    print(f"{'sampler':<8} {'complete':>8} {'pruned':>6} {'epochs':>6} {'search s':>9} {'best val':>9} "
          f"{'test (retrained)':>17}  best params")
    for r in rows:
        params = " ".join(f"{k.split('.')[-1]}={v:.4g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in r["best_params"].items())
        print(f"{r['sampler']:<8} {r['complete']:>8} {r['pruned']:>6} {r['epochs_trained']:>6} {r['search_seconds']:>9.0f} "
              f"{r['best_val_accuracy']:>9.4f} {r['retrained_test_accuracy']:>17.4f}  {params}")
    RESULTS.mkdir(exist_ok=True)
    out = {"args": vars(args), "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "runs": rows}
    (RESULTS / "tune.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"written: {RESULTS / 'tune.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
