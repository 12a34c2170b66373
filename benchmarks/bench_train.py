"""Training benchmarks for issue 2 (figures go to benchmarks/RESULTS.md).

    python benchmarks/bench_train.py --only seed000          # LeNet-5 on the 42,000-row Kaggle CSV
    python benchmarks/bench_train.py --only seed000_aug      # the same with light augmentation
    python benchmarks/bench_train.py --only seed000_dropout  # the same with dropout 0.25
    python benchmarks/bench_train.py --only seed000_regularized  # dropout, augmentation, 30 cosine epochs
    python benchmarks/bench_train.py --only seed000_bn       # the same model with batch normalization
    python benchmarks/bench_train.py --only seed000_elastic  # elastic distortions, 30 cosine epochs (meets 99.2%)
    python benchmarks/bench_train.py --only seed000_elastic --seed 1   # another split and initialisation
    python benchmarks/bench_train.py --only lenet5_mnist     # wall time to 99.0% MNIST test accuracy
    python benchmarks/bench_train.py --only resnet_mnist resnet_fashion lenet5_fashion
    python benchmarks/bench_train.py --only resnet_fashion_plain resnet_fashion_flip

Each experiment trains with ``train.fit.run_training`` exactly as the CLI would, prints its
figures and writes them to ``benchmarks/results/train_<name>.json``. Test-set accuracy is measured
on the official 10k test sets, which no model trains or early-stops on (early stopping and
learning-rate reduction watch the validation split carved from the training data).
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

from train.config import AugmentConfig, TrainConfig  # noqa: E402

SHARED = Path(os.environ.get("EDGECLF_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
CACHE = HERE / "cache"
RESULTS = HERE / "results"


class TestAccuracyTimer:
    """Keras callback: test accuracy after every epoch, and the wall time when it first reaches a target."""

    def __new__(cls, target: float):
        from train._tf import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.target, self.t0, self.reached_s, self.reached_epoch, self.curve = target, None, None, None, []
                self.splits = None

            def on_train_begin(self, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                test = self.splits["test"]
                # Timed separately: the clock below excludes this evaluation's own cost.
                t = time.perf_counter()
                # predict, not evaluate: with label smoothing the compiled loss wants one-hot labels
                pred = self.model.predict(test.x.astype("float32"), batch_size=512, verbose=0).argmax(1)
                acc = float((pred == test.y).mean())
                self.t0 += time.perf_counter() - t
                elapsed = time.perf_counter() - self.t0
                self.curve.append({"epoch": epoch + 1, "test_accuracy": acc, "elapsed_s": round(elapsed, 1)})
                print(f"  [timer] epoch {epoch + 1}: test accuracy {acc:.4f} after {elapsed:.0f} s of training", flush=True)
                if self.reached_s is None and acc >= self.target:
                    self.reached_s, self.reached_epoch = elapsed, epoch + 1

        return _Timer()


def kaggle_csv() -> Path:
    """The seed-000 dataset: a Kaggle digit-recognizer train.csv from the first 42,000 MNIST training images."""
    from train.data import load_dataset, write_kaggle_csv

    out = CACHE / "kaggle_train_42000.csv"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        ds = load_dataset(str(SHARED / "mnist"), split="train")
        write_kaggle_csv(ds.subset(range(42000)), out)
    return out


SEED: int | None = None  # --seed: run an experiment with another seed (split and initialisation)


def _run(name: str, config: TrainConfig, target: float | None = None) -> dict:
    from train.fit import run_training

    command = "python benchmarks/bench_train.py --only " + name
    if SEED is not None:
        command += f" --seed {SEED}"
        name = f"{name}_seed{SEED}"
        config = config.model_copy(update={"seed": SEED, "run_name": name})

    callbacks = [TestAccuracyTimer(target)] if target else []
    t = time.perf_counter()
    run_dir = run_training(config, callbacks=callbacks)
    wall = time.perf_counter() - t
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run.json").read_text())
    out = {
        "name": name,
        "command": command,
        "config": json.loads(config.model_dump_json()),
        "run_dir": str(run_dir),
        "params": info["params"],
        "epochs_run": info["epochs_run"],
        "train_seconds": info["train_seconds"],
        "wall_seconds": round(wall, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    for split in ("validation", "test"):
        if split in metrics:
            m = metrics[split]
            out[split] = {k: m[k] for k in ("n", "accuracy", "f1_macro", "f1_weighted", "roc_auc_macro") if k in m}
            out[split]["confused_pairs"] = m["confused_pairs"][:3]
    out["timing"] = metrics.get("timing")
    if callbacks:
        cb = callbacks[0]
        out["target_test_accuracy"] = target
        out["time_to_target_s"] = None if cb.reached_s is None else round(cb.reached_s, 1)
        out["epochs_to_target"] = cb.reached_epoch
        out["test_curve"] = cb.curve
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"train_{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("config", "test_curve")}, indent=2))
    return out


def seed000() -> dict:
    """Seed 000: LeNet-5, 42,000 Kaggle rows, 90/10 stratified split (37,800 / 4,200), Table III defaults."""
    csv = kaggle_csv()
    return _run("seed000", TrainConfig(model="lenet5", data=str(csv), test_data=str(SHARED / "mnist"),
                                       runs_dir=str(CACHE / "runs"), run_name="seed000", tensorboard=False, verbose=2))


def seed000_aug() -> dict:
    """Seed 000 with light augmentation (rotation 10 deg, shift 10%, zoom 10%): same model, split and defaults."""
    csv = kaggle_csv()
    return _run("seed000_aug", TrainConfig(model="lenet5", data=str(csv), test_data=str(SHARED / "mnist"),
                                           augment=AugmentConfig(enabled=True, rotation=10, shift=0.1, zoom=0.1),
                                           runs_dir=str(CACHE / "runs"), run_name="seed000_aug", tensorboard=False,
                                           verbose=2))


def seed000_dropout() -> dict:
    """Seed 000 with dropout 0.25 before each fully connected layer: same split and Table III defaults."""
    csv = kaggle_csv()
    return _run("seed000_dropout", TrainConfig(model="lenet5", model_kwargs={"dropout": 0.25}, data=str(csv),
                                               test_data=str(SHARED / "mnist"), runs_dir=str(CACHE / "runs"),
                                               run_name="seed000_dropout", tensorboard=False, verbose=2))


def seed000_regularized() -> dict:
    """Seed 000's model and split with dropout 0.25, light augmentation and 30 epochs of cosine decay."""
    csv = kaggle_csv()
    return _run("seed000_regularized", TrainConfig(
        model="lenet5", model_kwargs={"dropout": 0.25}, data=str(csv), test_data=str(SHARED / "mnist"), epochs=30,
        lr_schedule="cosine", early_stopping_patience=0,
        augment=AugmentConfig(enabled=True, rotation=8, shift=0.08, zoom=0.08),
        runs_dir=str(CACHE / "runs"), run_name="seed000_regularized", tensorboard=False, verbose=2))


def seed000_bn() -> dict:
    """Seed 000's LeNet-5 with batch normalization after each convolution and hidden dense layer, 20 cosine epochs."""
    csv = kaggle_csv()
    return _run("seed000_bn", TrainConfig(
        model="lenet5", model_kwargs={"batch_norm": True}, data=str(csv), test_data=str(SHARED / "mnist"),
        lr_schedule="cosine", early_stopping_patience=0,
        runs_dir=str(CACHE / "runs"), run_name="seed000_bn", tensorboard=False, verbose=2))


def seed000_elastic() -> dict:
    """Seed 000's LeNet-5 with elastic distortions (Simard et al. 2003: alpha 34, sigma 4), 30 cosine epochs."""
    csv = kaggle_csv()
    return _run("seed000_elastic", TrainConfig(
        model="lenet5", data=str(csv), test_data=str(SHARED / "mnist"), epochs=30,
        lr_schedule="cosine", early_stopping_patience=0,
        augment=AugmentConfig(enabled=True, rotation=0, shift=0, zoom=0, elastic=34, elastic_sigma=4),
        runs_dir=str(CACHE / "runs"), run_name="seed000_elastic", tensorboard=False, verbose=2))


def lenet5_mnist() -> dict:
    return _run("lenet5_mnist", TrainConfig(model="lenet5", data=str(SHARED / "mnist"), runs_dir=str(CACHE / "runs"),
                                            run_name="lenet5_mnist", tensorboard=False, verbose=2), target=0.99)


def resnet_mnist() -> dict:
    return _run("resnet_mnist", TrainConfig(model="resnet_small", data=str(SHARED / "mnist"), epochs=15, batch_size=128,
                                            lr_schedule="cosine", early_stopping_patience=0,
                                            augment=AugmentConfig(enabled=True, rotation=10, shift=0.1, zoom=0.1),
                                            runs_dir=str(CACHE / "runs"), run_name="resnet_mnist", tensorboard=False, verbose=2),
                target=0.995)


def lenet5_fashion() -> dict:
    return _run("lenet5_fashion", TrainConfig(model="lenet5", data=str(SHARED / "fashion-mnist"), runs_dir=str(CACHE / "runs"),
                                              run_name="lenet5_fashion", tensorboard=False, verbose=2), target=0.90)


def resnet_fashion() -> dict:
    return _run("resnet_fashion", TrainConfig(model="resnet_small", data=str(SHARED / "fashion-mnist"), epochs=15, batch_size=128,
                                              lr_schedule="cosine", early_stopping_patience=0, label_smoothing=0.1,
                                              augment=AugmentConfig(enabled=True, rotation=0, shift=0.1, zoom=0.0, hflip=True),
                                              runs_dir=str(CACHE / "runs"), run_name="resnet_fashion", tensorboard=False,
                                              verbose=2), target=0.93)


def resnet_fashion_plain() -> dict:
    """resnet_small on Fashion-MNIST without augmentation: 12 epochs of cosine decay, label smoothing 0.1."""
    return _run("resnet_fashion_plain", TrainConfig(model="resnet_small", data=str(SHARED / "fashion-mnist"), epochs=12,
                                                    batch_size=128, lr_schedule="cosine", early_stopping_patience=0,
                                                    label_smoothing=0.1, runs_dir=str(CACHE / "runs"),
                                                    run_name="resnet_fashion_plain", tensorboard=False, verbose=2),
                target=0.93)


def resnet_fashion_flip() -> dict:
    """resnet_small on Fashion-MNIST with horizontal flips only: 24 epochs of cosine decay, label smoothing 0.1."""
    return _run("resnet_fashion_flip", TrainConfig(model="resnet_small", data=str(SHARED / "fashion-mnist"), epochs=24,
                                                   batch_size=128, lr_schedule="cosine", early_stopping_patience=0,
                                                   label_smoothing=0.1,
                                                   augment=AugmentConfig(enabled=True, rotation=0, shift=0, zoom=0, hflip=True),
                                                   runs_dir=str(CACHE / "runs"), run_name="resnet_fashion_flip",
                                                   tensorboard=False, verbose=2),
                target=0.93)


EXPERIMENTS = {f.__name__: f for f in (seed000, seed000_aug, seed000_dropout, seed000_regularized, seed000_bn,
                                       seed000_elastic, lenet5_mnist, resnet_mnist, lenet5_fashion, resnet_fashion,
                                       resnet_fashion_plain, resnet_fashion_flip)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), default=sorted(EXPERIMENTS))
    p.add_argument("--seed", type=int, help="another seed (default: each experiment's, 42); results go to "
                                            "train_<name>_seed<N>.json")
    args = p.parse_args()
    global SEED
    SEED = args.seed
    for name in args.only:
        print(f"=== {name}", flush=True)
        EXPERIMENTS[name]()


if __name__ == "__main__":
    main()
