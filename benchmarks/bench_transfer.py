"""Transfer learning offline, for the issue "your own classes, in colour" (figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_transfer.py                                  # the default budget (see RESULTS.md)
    python benchmarks/bench_transfer.py --backbone-epochs 2 --backbone-limit 2000 --seeds 0 --out /tmp/smoke.json
    python benchmarks/bench_transfer.py --backbone-run benchmarks/cache/transfer/runs/<run>  # reuse a backbone

The claim: a backbone from one of our own runs, trained on CIFAR-10 classes 0-4 (airplane,
automobile, bird, cat, deer), fine-tuned on classes 5-9 (dog, frog, horse, ship, truck) with 100
labelled images per class beats the same architecture trained from scratch on those 500 images by
>= 10 points on the 5,000 CIFAR-10 test images of classes 5-9.

1. **Backbone**: ``resnet_small`` trained with ``train.fit.run_training`` (what ``python -m
   train.train --config <run>/config.json`` does) on the training images of classes 0-4, written
   as a Keras-layout ``.npz`` (``x_train, y_train, x_test, y_test, class_names``) because an image
   folder cannot be narrowed to some of its classes. 10 % stratified validation, cosine decay,
   horizontal flips and 12.5 % shifts.
2. **Target data**: for each ``--seeds`` value, a stratified draw of 500 of the 25,000 training
   images of classes 5-9 (exactly 100 per class; checked). ``run_training`` carves 20 % of them
   (stratified, config seed 42) as its validation split, so both models fit the same 400 images and
   choose their weights on the same 100; neither sees a test image.
3. **Transfer**: ``transfer`` with ``backbone_model=<backbone run>/model.keras``: ``--head-epochs``
   with the backbone frozen (lr 1e-3), then ``--fine-tune-epochs`` with its top
   ``--fine-tune-layers`` layers unfrozen (lr 1e-4; BatchNormalization stays frozen), the stock
   ``TrainConfig.transfer_stages`` schedule.
4. **Scratch**: ``resnet_small`` with the backbone's options, from random weights, for
   ``--head-epochs + --fine-tune-epochs`` epochs (the same epoch budget) at lr 1e-3.

Both target runs: the same augmentation as the backbone, batch 32, cosine decay per stage, no early
stopping; ``run_training`` keeps the weights of the best validation epoch (for transfer: of the
fine-tune stage). Both are scored on the 5,000 test images of classes 5-9 from their saved
``model.keras``. Writes ``benchmarks/results/transfer.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from train.config import AugmentConfig, TrainConfig  # noqa: E402

SHARED = Path(os.environ.get("EDGECLF_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
CIFAR = SHARED / "cifar10-jpeg" / "cifar10-jpeg.zip"
CACHE = HERE / "cache" / "transfer"
RESULTS = HERE / "results"
SOURCE_CLASSES = slice(0, 5)
TARGET_CLASSES = slice(5, 10)
PER_CLASS = 100
AUGMENT = AugmentConfig(enabled=True, rotation=0, shift=0.125, zoom=0, hflip=True)


def _classes(ds, which: slice):
    """The images of classes ``which`` (CIFAR-10 index order), relabelled 0..k-1."""
    from train.data import Dataset

    names = ds.class_names[which]
    keep = np.isin(ds.y, np.arange(len(ds.class_names))[which])
    return Dataset(x=ds.x[keep], y=ds.y[keep] - which.start, class_names=names, source=f"{ds.source} {names}")


def _write_npz(path: Path, train, test) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, x_train=train.x, y_train=train.y, x_test=test.x, y_test=test.y,
             class_names=np.array(train.class_names))
    tmp.replace(path)
    return path


def prepare_data(seeds: list[int]) -> tuple[Path, dict[int, Path]]:
    """The classes-0-4 .npz (all of it) and, per seed, a classes-5-9 .npz of 100 training images per class."""
    from train.data import load_dataset, stratified_sample

    source = CACHE / "cifar_classes0-4.npz"
    targets = {s: CACHE / f"cifar_classes5-9_{PER_CLASS}per_class_seed{s}.npz" for s in seeds}
    if source.is_file() and all(p.is_file() for p in targets.values()):
        return source, targets
    train = load_dataset(str(CIFAR), split="train", colour="rgb")
    test = load_dataset(str(CIFAR), split="test", colour="rgb")
    if not source.is_file():
        _write_npz(source, _classes(train, SOURCE_CLASSES), _classes(test, SOURCE_CLASSES))
    pool, target_test = _classes(train, TARGET_CLASSES), _classes(test, TARGET_CLASSES)
    for seed, path in targets.items():
        k = len(pool.class_names)
        few = stratified_sample(pool, PER_CLASS * k, seed=seed)
        counts = few.class_counts().tolist()
        if counts != [PER_CLASS] * k:
            raise RuntimeError(f"seed {seed}: expected {PER_CLASS} images per class, drew {counts}")
        _write_npz(path, few, target_test)
    return source, targets


def _base_config(**kw) -> TrainConfig:
    return TrainConfig(colour="rgb", lr_schedule="cosine", early_stopping_patience=0, augment=AUGMENT,
                       runs_dir=str(CACHE / "runs"), tensorboard=False, verbose=2, **kw)


def _test_accuracy(run_dir: Path, npz: Path) -> float:
    from train._tf import keras
    from train.data import load_dataset

    test = load_dataset(str(npz), split="test")
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    pred = model.predict(test.x.astype("float32"), batch_size=500, verbose=0).argmax(1)
    return float((pred == test.y).mean())


def _facts(run_dir: Path, **extra) -> dict:
    info = json.loads((run_dir / "run.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    return {"run_dir": str(run_dir), "epochs_run": info["epochs_run"], "params": info["params"],
            "split_sizes": info["split_sizes"], "best_val_accuracy": max(history["val_accuracy"]),
            "train_seconds": info["train_seconds"], **extra}


def _train(config: TrainConfig) -> tuple[Path, dict]:
    """``run_training`` (no report), or the run already in place when its config.json is this config."""
    from train.fit import run_training

    run_dir = Path(config.runs_dir) / config.run_name
    done = all((run_dir / f).is_file() for f in ("model.keras", "run.json", "history.json", "config.json"))
    # run.json is written last: an older one belongs to an earlier run whose config.json was overwritten
    done = done and (run_dir / "run.json").stat().st_mtime >= (run_dir / "config.json").stat().st_mtime
    if done and json.loads((run_dir / "config.json").read_text()) == json.loads(config.model_dump_json()):
        print(f"using the finished run {run_dir} (same config)", flush=True)
        return run_dir, _facts(run_dir, reused=True)
    t = time.perf_counter()
    run_dir = run_training(config, evaluate=False)
    return run_dir, _facts(run_dir, wall_seconds=round(time.perf_counter() - t, 1))


def backbone(source: Path, args) -> tuple[Path, dict]:
    """The classes-0-4 run (``--backbone-run``, or trained; reused when the same config already ran)."""
    if args.backbone_run:
        run_dir = Path(args.backbone_run)
        return run_dir, _facts(run_dir, reused=True)
    limit = args.backbone_limit
    name = f"backbone-{args.model}-classes0-4-e{args.backbone_epochs}-n{limit or 'all'}"
    return _train(_base_config(model=args.model, data=str(source), epochs=args.backbone_epochs, batch_size=128,
                               train_limit=limit, run_name=name))


def target_runs(backbone_dir: Path, npz: Path, seed: int, args) -> dict:
    common = dict(data=str(npz), batch_size=32, val_fraction=0.2)
    transfer = _base_config(
        model="transfer", model_kwargs={"backbone_model": str(backbone_dir / "model.keras")},
        epochs=args.head_epochs, fine_tune_epochs=args.fine_tune_epochs, fine_tune_layers=args.fine_tune_layers,
        run_name=f"transfer-ft{args.fine_tune_layers}-seed{seed}", **common)
    scratch = _base_config(model=args.model, epochs=args.head_epochs + args.fine_tune_epochs,
                           run_name=f"scratch-seed{seed}", **common)
    out = {"sample_seed": seed, "data": str(npz)}
    for label, config in (("transfer", transfer), ("scratch", scratch)):
        print(f"=== {label}, sample seed {seed}", flush=True)
        run_dir, facts = _train(config)
        facts["test_accuracy"] = _test_accuracy(run_dir, npz)
        print(f"  {label}: test accuracy {facts['test_accuracy']:.4f} ({facts['train_seconds']:.0f} s training)",
              flush=True)
        out[label] = facts
    out["gap_pts"] = round((out["transfer"]["test_accuracy"] - out["scratch"]["test_accuracy"]) * 100, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet_small", help="registered model for the backbone and the scratch run")
    p.add_argument("--backbone-epochs", type=int, default=12)
    p.add_argument("--backbone-limit", type=int, default=None,
                   help="stratified sample of N of the 22,500 classes-0-4 training images (default: all)")
    p.add_argument("--backbone-run", help="reuse this classes-0-4 run directory instead of training one")
    p.add_argument("--head-epochs", type=int, default=20, help="transfer: epochs with the backbone frozen")
    p.add_argument("--fine-tune-epochs", type=int, default=30, help="transfer: epochs with its top layers unfrozen")
    p.add_argument("--fine-tune-layers", type=int, default=20, help="backbone layers unfrozen for fine-tuning")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the 100-per-class draws")
    p.add_argument("--out", default=str(RESULTS / "transfer.json"))
    args = p.parse_args()

    t0 = time.perf_counter()
    source, targets = prepare_data(args.seeds)
    data_s = time.perf_counter() - t0
    bb_dir, bb = backbone(source, args)
    bb["source_test_accuracy"] = _test_accuracy(bb_dir, source)
    print(f"backbone {bb_dir}: classes 0-4 test accuracy {bb['source_test_accuracy']:.4f}", flush=True)
    runs = [target_runs(bb_dir, targets[s], s, args) for s in args.seeds]

    gaps = [r["gap_pts"] for r in runs]
    mean = lambda key: round(float(np.mean([r[key]["test_accuracy"] for r in runs])), 4)  # noqa: E731
    result = {
        "command": "python benchmarks/bench_transfer.py " + " ".join(sys.argv[1:]),
        "claim": "transfer beats scratch by >= 10 pt on the 5,000 test images of CIFAR-10 classes 5-9",
        "source_classes": ["airplane", "automobile", "bird", "cat", "deer"],
        "target_classes": ["dog", "frog", "horse", "ship", "truck"],
        "per_class": PER_CLASS,
        "config_seed": 42,
        "args": vars(args),
        "backbone": bb,
        "runs": runs,
        "mean_transfer_accuracy": mean("transfer"),
        "mean_scratch_accuracy": mean("scratch"),
        "gap_pts": gaps,
        "mean_gap_pts": round(float(np.mean(gaps)), 2),
        "min_gap_pts": min(gaps),
        "meets_10pt": min(gaps) >= 10,
        "data_seconds": round(data_s, 1),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("mean_transfer_accuracy", "mean_scratch_accuracy", "gap_pts",
                                             "mean_gap_pts", "meets_10pt", "wall_seconds")}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
