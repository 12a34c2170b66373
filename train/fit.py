"""Training core: :func:`run_training` fits a registered model on a dataset and writes a run directory.

``python -m train.train`` (train/train.py) is its command line; ``train.analysis.tune``,
``train.analysis.crossval`` and ``train.loop.retrain`` reuse :func:`fit` and :func:`one_hot_if_needed`.
"""
from __future__ import annotations

import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig
from train.data import summarize
from train.data.pipeline import build_splits, detect_polarity, make_augmenter, make_tf_dataset
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


def one_hot_if_needed(data, config: TrainConfig, num_classes: int):
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


def fit(model, config, train_data, val_data, epochs, lr, run_dir, steps, initial_epoch=0, extra_callbacks=()):
    """Compile ``model`` for ``config`` (optimizer, loss, schedule) and fit it with the run's callbacks."""
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
    from train._tf import keras

    models.get_spec(config.model)  # an unknown model name fails before any data is read
    keras.utils.set_random_seed(config.seed)
    mixed = setup_precision(config.mixed_precision)
    strategy = pick_strategy(config.distribute)

    t0 = time.perf_counter()
    splits = build_splits(config)
    run_dir = _run_dir(config)
    facts = _write_data_facts(config, splits, run_dir)
    batch = config.batch_size * strategy.num_replicas_in_sync
    train_data, val_data, steps = _tf_datasets(config, splits, batch)

    model, trainer = _build_model(config, strategy, facts["input_shape"], len(facts["class_names"]))
    t_fit = time.perf_counter()
    for cb in callbacks or []:
        cb.splits = splits
    with strategy.scope():
        history = _fit_stages(model, trainer, config, train_data, val_data, run_dir, steps, list(callbacks or ()))
    train_seconds = time.perf_counter() - t_fit

    _save_model(model, trainer, config, run_dir, mixed)
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    info = _run_info(facts, splits, history, model, strategy, mixed,
                     train_seconds=train_seconds, data_seconds=t_fit - t0)
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    mark_latest(run_dir)

    if evaluate:
        from train.report import evaluate_run

        metrics = evaluate_run(run_dir, model=model, splits=splits)
        info["total_seconds"] = round(time.perf_counter() - t0, 2)
        (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
        _print_outcome(run_dir, metrics, info)
    return run_dir


def _write_data_facts(config: TrainConfig, splits: dict, run_dir: Path) -> dict[str, Any]:
    """Write config.json, labels.txt and dataset.json; return the facts run.json records about the data."""
    train_ds, val_ds, test_ds = splits["train"], splits["val"], splits["test"]
    summary = summarize(train_ds)
    facts = {"input_shape": train_ds.image_shape, "class_names": train_ds.class_names,
             "polarity": detect_polarity(train_ds.x[:2000])}
    logger.info(
        "data %s: train %d, val %d, test %s, shape %s, %d classes", config.data, len(train_ds), len(val_ds),
        len(test_ds) if test_ds is not None else "-", facts["input_shape"], len(facts["class_names"]),
    )
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    (run_dir / "labels.txt").write_text("\n".join(facts["class_names"]) + "\n")
    (run_dir / "dataset.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return facts


def _tf_datasets(config: TrainConfig, splits: dict, batch: int):
    """The training (augmented) and validation tf.data pipelines, and the steps per epoch."""
    train_ds, val_ds = splits["train"], splits["val"]
    n_classes = len(train_ds.class_names)
    border = np.concatenate([train_ds.x[:2000, 0].ravel(), train_ds.x[:2000, -1].ravel()])
    augmenter = make_augmenter(config.augment, train_ds.image_shape, float(np.median(border)), config.seed)
    train_data = one_hot_if_needed(
        make_tf_dataset(train_ds, batch, training=True, augmenter=augmenter, seed=config.seed), config, n_classes
    )
    val_data = one_hot_if_needed(make_tf_dataset(val_ds, batch, training=False), config, n_classes)
    return train_data, val_data, int(np.ceil(len(train_ds) / batch))


def _build_model(config: TrainConfig, strategy, input_shape, num_classes: int):
    """The model to save and the one to fit (an adversarial trainer wraps the model)."""
    from train import models

    with strategy.scope():
        model = models.create_model(config.model, input_shape, num_classes, **config.model_kwargs)
        trainer = model
        if config.adversarial is not None:
            from train.analysis.adversarial import AdversarialTrainer

            trainer = AdversarialTrainer(model, **config.adversarial.model_dump())
    model.summary(print_fn=logger.info)
    return model, trainer


def _fit_stages(model, trainer, config: TrainConfig, train_data, val_data, run_dir: Path, steps: int,
                callbacks: list) -> dict[str, list[float]]:
    """Fit (a transfer model: the head first, then fine-tune); return the per-epoch history."""
    from train import models

    staged = config.model == "transfer" and config.transfer_stages
    if staged:
        models.set_transfer_stage(model, "head")
    hist = fit(trainer, config, train_data, val_data, config.epochs, config.learning_rate, run_dir, steps,
               extra_callbacks=callbacks)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    if staged and config.fine_tune_epochs:
        models.set_transfer_stage(model, "fine_tune", fine_tune_layers=config.fine_tune_layers)
        ft = fit(trainer, config, train_data, val_data, config.fine_tune_epochs, config.learning_rate / 10, run_dir,
                 steps, initial_epoch=len(history.get("loss", [])), extra_callbacks=callbacks)
        for k, vals in ft.history.items():
            history.setdefault(k, []).extend(float(v) for v in vals)
    return history


def _save_model(model, trainer, config: TrainConfig, run_dir: Path, mixed: bool) -> None:
    from train._tf import keras

    best = run_dir / "best.weights.h5"
    if best.is_file() and not config.early_stopping_patience:
        trainer.load_weights(str(best))  # EarlyStopping already restored the best weights otherwise
    best.unlink(missing_ok=True)
    if mixed:  # save a float32 copy: devices and the converters want float32 weights
        keras.mixed_precision.set_global_policy("float32")
    model.save(run_dir / MODEL_FILE)


def _run_info(facts: dict, splits: dict, history: dict, model, strategy, mixed: bool, *,
              train_seconds: float, data_seconds: float) -> dict[str, Any]:
    from train._tf import tf

    return {
        "input_shape": list(facts["input_shape"]),
        "class_names": facts["class_names"],
        "colour": "rgb" if facts["input_shape"][-1] == 3 else "grey",
        "polarity": facts["polarity"],
        "split_sizes": {k: (len(v) if v is not None else 0) for k, v in splits.items()},
        "epochs_run": len(history.get("loss", [])),
        "train_seconds": round(train_seconds, 2),
        "data_seconds": round(data_seconds, 2),
        "params": int(model.count_params()),
        "mixed_precision": mixed,
        "replicas": strategy.num_replicas_in_sync,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }


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
