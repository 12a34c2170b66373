"""``python -m train.train``: train a registered model on a dataset and write a run directory.

    python -m train.train --model lenet5 --data path/to/train.csv
    python -m train.train --model resnet_small --data ../shared/data/fashion-mnist --augment
    python -m train.train --config my_run.yaml --epochs 5      # flags override the file
    python -m train.train --noise-std 50                       # noise-injection defence
    python -m train.train --adversarial fgsm --adv-epsilon 16  # adversarial training (pixel units)

The library twin is :func:`run_training` (``run_training(TrainConfig(model="lenet5", data=...))``).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from train.config import AdversarialConfig, AugmentConfig, TrainConfig
from train.data import DataError, summarize
from train.data_pipeline import build_splits, detect_polarity, make_augmenter, make_tf_dataset
from train.runs import MODEL_FILE, mark_latest

logger = logging.getLogger(__name__)


def pick_strategy(kind: str):
    """tf.distribute strategy: Mirrored over several GPUs, MultiWorker across hosts (TF_CONFIG), else default."""
    from train._tf import tf

    gpus = tf.config.list_physical_devices("GPU")
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def setup_precision(mode: str) -> bool:
    from train._tf import keras, tf

    on = mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")
    return on


def _optimizer(config: TrainConfig, lr, ):
    from train._tf import keras

    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=1e-4)
    return keras.optimizers.Adam(lr)


def _compile(model, config: TrainConfig, lr) -> None:
    from train._tf import keras

    if config.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(optimizer=_optimizer(config, lr), loss=loss, metrics=["accuracy"])


def _callbacks(config: TrainConfig, run_dir: Path, steps_per_epoch: int) -> list:
    from train._tf import keras

    cbs: list = [
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "best.weights.h5"), monitor="val_accuracy", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
    ]
    if config.lr_schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-6, verbose=1))
    if config.early_stopping_patience:
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", patience=config.early_stopping_patience, restore_best_weights=True, verbose=1
            )
        )
    if config.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), histogram_freq=0))
    return cbs


def _learning_rate(config: TrainConfig, steps: int):
    from train._tf import keras

    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, steps))
    return config.learning_rate


def _one_hot_if_needed(data, config: TrainConfig, num_classes: int):
    from train._tf import tf

    if not config.label_smoothing:
        return data
    return data.map(lambda x, y: (x, tf.one_hot(y, num_classes)))


def _run_dir(config: TrainConfig) -> Path:
    name = config.run_name
    if not name:
        data = Path(config.data).stem or config.data
        name = f"{config.model}-{data}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    d = Path(config.runs_dir) / name
    d.mkdir(parents=True, exist_ok=config.run_name is not None)
    return d


def _fit(model, config, train_data, val_data, epochs, lr, run_dir, steps, initial_epoch=0, extra_callbacks=()):
    _compile(model, config, _learning_rate(config, steps * epochs))
    verbose = config.verbose if (config.verbose != 1 or sys.stdout.isatty()) else 2
    return model.fit(
        train_data,
        validation_data=val_data,
        epochs=initial_epoch + epochs,
        initial_epoch=initial_epoch,
        callbacks=_callbacks(config, run_dir, steps) + list(extra_callbacks),
        verbose=verbose,
    )


def _versions() -> dict[str, str]:
    from train._tf import keras, tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}


def run_training(config: TrainConfig, *, evaluate: bool = True, callbacks: list | None = None) -> Path:
    """Train ``config.model`` on ``config.data``; return the run directory it wrote.

    ``callbacks`` are extra Keras callbacks (e.g. a benchmark's timer); they may read
    ``callback.splits`` which is set to the run's data splits before training starts.
    """
    from train import models
    from train._tf import keras, tf

    models.get_spec(config.model)  # an unknown model name fails before any data is read
    keras.utils.set_random_seed(config.seed)
    mixed = setup_precision(config.mixed_precision)
    strategy = pick_strategy(config.distribute)

    t0 = time.perf_counter()
    splits = build_splits(config)
    train_ds, val_ds, test_ds = splits["train"], splits["val"], splits["test"]
    summary = summarize(train_ds)
    class_names = train_ds.class_names
    input_shape = train_ds.image_shape
    polarity = detect_polarity(train_ds.x[:2000])
    logger.info(
        "data %s: train %d, val %d, test %s, shape %s, %d classes",
        config.data, len(train_ds), len(val_ds), len(test_ds) if test_ds is not None else "-", input_shape, len(class_names),
    )

    run_dir = _run_dir(config)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    (run_dir / "labels.txt").write_text("\n".join(class_names) + "\n")
    (run_dir / "dataset.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")

    batch = config.batch_size * strategy.num_replicas_in_sync
    border = np.concatenate([train_ds.x[:2000, 0].ravel(), train_ds.x[:2000, -1].ravel()])
    augmenter = make_augmenter(config.augment, input_shape, float(np.median(border)), config.seed)
    train_data = _one_hot_if_needed(
        make_tf_dataset(train_ds, batch, training=True, augmenter=augmenter, seed=config.seed), config, len(class_names)
    )
    val_data = _one_hot_if_needed(make_tf_dataset(val_ds, batch, training=False), config, len(class_names))
    steps = int(np.ceil(len(train_ds) / batch))

    with strategy.scope():
        model = models.create_model(config.model, input_shape, len(class_names), **config.model_kwargs)
        trainer = model  # what is fitted; ``model`` is what is saved
        if config.adversarial is not None:
            from train.adversarial import AdversarialTrainer

            trainer = AdversarialTrainer(model, **config.adversarial.model_dump())
    model.summary(print_fn=logger.info)

    t_fit = time.perf_counter()
    staged = config.model == "transfer" and config.transfer_stages
    with strategy.scope():
        if staged:
            models.set_transfer_stage(model, "head")
        for cb in callbacks or []:
            cb.splits = splits
        hist = _fit(trainer, config, train_data, val_data, config.epochs, config.learning_rate, run_dir, steps,
                    extra_callbacks=callbacks or ())
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        if staged and config.fine_tune_epochs:
            models.set_transfer_stage(model, "fine_tune", fine_tune_layers=config.fine_tune_layers)
            ft = _fit(
                trainer, config, train_data, val_data, config.fine_tune_epochs, config.learning_rate / 10, run_dir, steps,
                initial_epoch=len(history.get("loss", [])), extra_callbacks=callbacks or (),
            )
            for k, vals in ft.history.items():
                history.setdefault(k, []).extend(float(v) for v in vals)
    train_seconds = time.perf_counter() - t_fit

    best = run_dir / "best.weights.h5"
    if best.is_file() and not config.early_stopping_patience:
        trainer.load_weights(str(best))  # EarlyStopping already restored the best weights otherwise
    best.unlink(missing_ok=True)
    if mixed:  # save a float32 copy: devices and the converters want float32 weights
        keras.mixed_precision.set_global_policy("float32")
    model.save(run_dir / MODEL_FILE)
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")

    info: dict[str, Any] = {
        "input_shape": list(input_shape),
        "class_names": class_names,
        "colour": "rgb" if input_shape[-1] == 3 else "grey",
        "polarity": polarity,
        "split_sizes": {k: (len(v) if v is not None else 0) for k, v in splits.items()},
        "epochs_run": len(history.get("loss", [])),
        "train_seconds": round(train_seconds, 2),
        "data_seconds": round(t_fit - t0, 2),
        "params": int(model.count_params()),
        "mixed_precision": mixed,
        "replicas": strategy.num_replicas_in_sync,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    mark_latest(run_dir)

    if evaluate:
        from train.evaluate import evaluate_run

        metrics = evaluate_run(run_dir, model=model, splits=splits)
        info["total_seconds"] = round(time.perf_counter() - t0, 2)
        (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        _print_outcome(run_dir, metrics, info)
    return run_dir


def _print_outcome(run_dir: Path, metrics: dict, info: dict) -> None:
    lines = [f"run: {run_dir}"]
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            lines.append(
                f"{split:<10} accuracy {m['accuracy']:.4f}  macro F1 {m['f1_macro']:.4f}  "
                f"weighted F1 {m['f1_weighted']:.4f}  n={m['n']}"
            )
    lines.append(f"training time {info['train_seconds']:.1f} s over {info['epochs_run']} epochs; "
                 f"total {info.get('total_seconds', 0):.1f} s")
    lines.append(f"report: {run_dir / 'report.html'}")
    print("\n".join(lines))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _kv(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--model-kw expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML/JSON TrainConfig file; flags override it")
    p.add_argument("--model", help="registered model name (see --list-models)")
    p.add_argument("--model-kw", action="append", metavar="KEY=VALUE", help="model factory argument (repeatable; VALUE is JSON)")
    p.add_argument("--data", help="dataset: mnist | fashion_mnist | Kaggle CSV | IDX folder | image folder | .zip | .npz")
    p.add_argument("--test-data", help="held-out test set (default: the dataset's own test split)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--colour", choices=["grey", "rgb"])
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--train-limit", type=int, help="stratified sample of N training images")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--optimizer", choices=["adam", "sgd", "adamw"])
    p.add_argument("--lr-schedule", choices=["plateau", "cosine", "none"])
    p.add_argument("--early-stopping-patience", type=int)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", action="store_true", default=None, help="rotation/shift/zoom augmentation")
    p.add_argument("--noise-std", type=float, metavar="PIXELS",
                   help="noise-injection defence: Gaussian noise of this std (0..128 pixels) on training images")
    p.add_argument("--elastic", type=float, metavar="ALPHA",
                   help="elastic distortions of this strength in pixels (0..100; 34 for 28x28 digits)")
    p.add_argument("--elastic-sigma", type=float, metavar="PIXELS", help="smoothness of the elastic field (default 4)")
    p.add_argument("--adversarial", choices=["fgsm", "pgd"], help="adversarial training with this attack")
    p.add_argument("--adv-epsilon", type=float, metavar="PIXELS", help="L-inf size of the attack, 0 < eps <= 255 pixels")
    p.add_argument("--adv-ratio", type=float, help="share of each batch replaced by adversarial examples (default 0.5)")
    p.add_argument("--adv-pgd-steps", type=int, help="PGD steps per example (default 7)")
    p.add_argument("--seed", type=int)
    p.add_argument("--mixed-precision", choices=["auto", "on", "off"])
    p.add_argument("--distribute", choices=["auto", "none", "mirrored", "multiworker"])
    p.add_argument("--runs-dir")
    p.add_argument("--run-name")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--list-models", action="store_true", help="list registered models and exit")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {
        k: getattr(args, k)
        for k in (
            "model", "data", "test_data", "image_size", "colour", "val_fraction", "test_fraction", "train_limit", "epochs",
            "batch_size", "learning_rate", "optimizer", "lr_schedule", "early_stopping_patience", "label_smoothing",
            "seed", "mixed_precision", "distribute", "runs_dir", "run_name", "tensorboard",
        )
        if getattr(args, k) is not None
    }
    if args.model_kw:
        fields["model_kwargs"] = _kv(args.model_kw)
    if args.quiet:
        fields["verbose"] = 0
    if args.config:
        config = TrainConfig.from_file(args.config, **fields)
    else:
        config = TrainConfig(**fields)
    if args.augment:
        config.augment.enabled = True
    for flag, field, valid in (("--noise-std", "noise_std", "within 0..128 pixels"),
                               ("--elastic", "elastic", "within 0..100 pixels"),
                               ("--elastic-sigma", "elastic_sigma", "above 0 and at most 32 pixels")):
        value = getattr(args, field)
        if value is None:
            continue
        try:
            config.augment = AugmentConfig.model_validate({**config.augment.model_dump(), field: value})
        except ValidationError as e:
            raise ValueError(f"{flag} must be {valid}; got {value}") from e
    return _with_adversarial(config, args)


_ADV_FLAGS = {"method": "--adversarial", "epsilon": "--adv-epsilon", "ratio": "--adv-ratio", "pgd_steps": "--adv-pgd-steps"}


def _with_adversarial(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """Apply the --adversarial/--adv-* flags over the config's ``adversarial`` section."""
    given = {k: getattr(args, "adversarial" if k == "method" else "adv_" + k) for k in _ADV_FLAGS}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return config
    raw = {**(config.adversarial.model_dump() if config.adversarial else {}), **given}
    if "method" not in raw:
        raise ValueError("--adv-epsilon/--adv-ratio/--adv-pgd-steps need --adversarial fgsm|pgd")
    if "epsilon" not in raw:
        raise ValueError("--adversarial needs --adv-epsilon (L-inf size in pixels, 0 < eps <= 255)")
    try:
        adversarial = AdversarialConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{_ADV_FLAGS.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid adversarial training option: {problems}") from e
    return config.model_copy(update={"adversarial": adversarial})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list_models:
        from train.models import list_models, model_info

        for name in list_models():
            print(f"{name:<14} {model_info(name).get('description', '')}")
        return 0
    try:
        config = config_from_args(args)
        run_training(config)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
