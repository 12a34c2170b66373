"""Robustness benchmark for issue 6 (figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_robustness.py                  # train the three models (cached), measure
    python benchmarks/bench_robustness.py --retrain        # ignore cached runs

LeNet-5 on MNIST (54,000 / 6,000 stratified split of the 60k training images) trained three ways
with the same schedule (``--epochs``, batch 128, Adam 1e-3 constant, best-validation weights):

- ``plain``;
- ``noise``: noise injection, ``augment.noise_std`` (Gaussian, ``--noise-std`` pixels) on every
  training image;
- ``fgsm_adv``: adversarial training, half of every batch replaced by FGSM examples of
  ``--adv-epsilon`` pixels made against the current weights.

Each is exported for ``rpi`` (full INT8, uint8 I/O) and measured float and INT8: clean accuracy on
the official 10k test set, then on ``--samples`` test images (stratified) under Gaussian noise and
blur at severity 3 and FGSM / PGD (10 steps, random start) at eps 8 and 16 pixels, the attacks
made on each float model and transferred to its INT8 model (``train.robustness``).

Writes ``benchmarks/results/robustness.json``.
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
CACHE = HERE / "cache"
RESULTS = HERE / "results"
MNIST = SHARED / "mnist"
EPSILONS = (0.0, 8.0, 16.0)
CONDITIONS = ("gaussian_noise s3", "blur s3", "fgsm 8", "fgsm 16", "pgd 8", "pgd 16")


def variants(noise_std: float, adv_epsilon: float) -> dict[str, dict]:
    return {
        "plain": {},
        "noise": {"augment": {"noise_std": noise_std}},
        "fgsm_adv": {"adversarial": {"method": "fgsm", "epsilon": adv_epsilon, "ratio": 0.5}},
    }


def train_variant(name: str, extra: dict, epochs: int, retrain: bool) -> Path:
    """The variant's run, reused from the cache when its config is unchanged."""
    from train.config import TrainConfig
    from train.fit import run_training

    config = TrainConfig(model="lenet5", data=str(MNIST), epochs=epochs, batch_size=128, lr_schedule="none",
                         early_stopping_patience=0, runs_dir=str(CACHE / "robustness_runs"), run_name=f"lenet5-{name}",
                         tensorboard=False, verbose=2, **extra)
    run = Path(config.runs_dir) / config.run_name
    cached = run / "config.json"
    if not retrain and (run / "run.json").is_file() and json.loads(cached.read_text()) == json.loads(config.model_dump_json()):
        print(f"{name}: using cached run {run}")
        return run
    return run_training(config, evaluate=False)


def _value(data: dict, condition: str, key: str) -> float:
    """Accuracy under ``condition`` ('blur s3', 'fgsm 8') for model ``key``."""
    name, level = condition.split()
    if name in data["corruptions"]:
        return data["corruptions"][name][key][0]  # severity 3 is the only one measured
    return data["attacks"][name][key][EPSILONS.index(float(level))]


def measure(name: str, run: Path, samples: int) -> dict:
    from train.analysis.robustness import evaluate_robustness
    from train.export import export_bundle

    export = export_bundle("rpi", run, CACHE / "robustness_bundles" / name, latency_runs=20)
    t0 = time.perf_counter()
    data = evaluate_robustness(run, export.bundle_dir, corruptions=["gaussian_noise", "blur"], severities=[3],
                               attacks=["fgsm", "pgd"], epsilons=EPSILONS, samples=samples, seed=0)
    info = json.loads((run / "run.json").read_text())
    art = export.report["artefacts"][0]
    return {
        "run": str(run),
        "train_seconds": info["train_seconds"],
        "epochs": info["epochs_run"],
        "clean_10k": {"float": export.report["float"]["accuracy"]["test"], "int8": art["accuracy"]["test"]},
        "conditions": {c: {"float": _value(data, c, "float"), "int8": _value(data, c, "tflite")} for c in CONDITIONS},
        "subset_clean": {"float": data["clean"]["float"], "int8": data["clean"]["tflite"]},
        "robustness_seconds": round(time.perf_counter() - t0, 1),
        "data": data,
    }


def markdown(results: dict) -> str:
    head = ("| training | model | clean (10k) | vs plain | noise s3 | blur s3 | FGSM 8 | FGSM 16 | PGD 8 | PGD 16 | train s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    plain = results["variants"]["plain"]["clean_10k"]
    for name, r in results["variants"].items():
        for key, label in (("float", "float"), ("int8", "INT8")):
            clean = r["clean_10k"][key]
            cells = " | ".join(f"{r['conditions'][c][key]:.2%}" for c in CONDITIONS)
            lines.append(f"| {name} | {label} | {clean:.2%} | {(clean - plain[key]) * 100:+.2f} pt | {cells} | "
                         f"{r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="epochs for every variant (default 5)")
    p.add_argument("--noise-std", type=float, default=50.0, help="noise injection std, pixels (default 50)")
    p.add_argument("--adv-epsilon", type=float, default=16.0, help="FGSM training epsilon, pixels (default 16)")
    p.add_argument("--samples", type=int, default=5000, help="stratified test images for the corruptions and attacks")
    p.add_argument("--retrain", action="store_true", help="train again even when a cached run matches")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    results = {
        "command": "python benchmarks/bench_robustness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "settings": {"epochs": args.epochs, "noise_std": args.noise_std, "adv_epsilon": args.adv_epsilon, "samples": args.samples,
                     "noise_s3_sigma": 60, "blur_s3_sigma": 1.5, "pgd_steps": 10, "export_target": "rpi"},
        "variants": {},
    }
    for name, extra in variants(args.noise_std, args.adv_epsilon).items():
        run = train_variant(name, extra, args.epochs, args.retrain)
        results["variants"][name] = measure(name, run, args.samples)
        print(f"{name}: {json.dumps(results['variants'][name]['conditions'])}", flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "robustness.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"whole script {results['seconds']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
