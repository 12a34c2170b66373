"""The run an export starts from: a run directory, a loaded ``Run``, or a bare saved model file."""
from __future__ import annotations

from pathlib import Path

from train.data import DataError
from train.export.errors import DataProblem, ModelLoadError, OptionError
from train.runs import Run, RunError, load_run


def open_source(run: str | Path | Run | None, data: str | None = None, runs_dir: str | Path = "runs") -> Run:
    """The run to export: a run directory (default: the latest under ``runs_dir``), a ``Run``, or a
    saved model file (``.keras``/``.h5``) with ``data`` naming the dataset to calibrate and judge on.

    The returned run's ``model`` is loaded (``ModelLoadError`` when unreadable).
    """
    if isinstance(run, Run):
        r = run
    else:
        p = Path(run) if run is not None else None
        if p is not None and p.is_file() and p.suffix in (".keras", ".h5"):
            r = _run_from_model_file(p, data)
        else:
            if p is not None and not p.exists():
                raise RunError(f"{p}: run directory not found (pass a run directory from `python -m train.train`, "
                               "or a .keras file with --data)")
            r = load_run(p, runs_dir=runs_dir)
            if data is not None:
                r.config = r.config.model_copy(update={"data": data, "test_data": None})
    if "model" not in r.__dict__:
        r.__dict__["model"] = load_model(r.model_path)
    return r


def load_model(path: Path):
    """The tf_keras model saved at ``path``; ``ModelLoadError`` when it cannot be read."""
    from train._tf import keras

    try:
        return keras.models.load_model(path)
    except Exception as e:  # corrupt zips, truncated h5, missing custom objects: all "unreadable"
        raise ModelLoadError(f"{path}: cannot read the model ({type(e).__name__}: {e})") from e


def load_splits(run: Run) -> dict:
    """The run's own train/val(/test) splits, rebuilt; ``DataProblem`` when they cannot be."""
    try:
        splits = run.splits()
    except (OSError, DataError) as e:
        raise DataProblem(f"cannot rebuild the data splits of {run.path} ({run.config.data}): {e}") from e
    if splits.get("val") is None or len(splits["val"]) == 0:
        raise DataProblem(f"{run.config.data}: the validation split is empty")
    return splits


def _run_from_model_file(path: Path, data: str | None) -> Run:
    from train.config import TrainConfig

    parent = path.parent
    if (parent / "config.json").is_file() and (parent / "run.json").is_file():
        r = load_run(parent)
        r.__dict__["model"] = load_model(path)
        if data is not None:
            r.config = r.config.model_copy(update={"data": data, "test_data": None})
        return r
    if data is None:
        raise OptionError(f"{path} is a bare model file: pass --data SPEC (the dataset to calibrate and evaluate on)")
    model = load_model(path)
    from train.data import load_dataset
    from train.data.pipeline import detect_polarity

    try:
        probe = load_dataset(data, split="train")
    except DataError as e:
        raise DataProblem(f"{data}: {e}") from e
    shape = [int(d) for d in model.input_shape[1:]]
    info = {
        "input_shape": shape,
        "class_names": probe.class_names,
        "colour": "rgb" if shape[-1] == 3 else "grey",
        "polarity": detect_polarity(probe.x[:2000]),
    }
    config = TrainConfig(data=data, image_size=shape[:2] if list(probe.image_shape[:2]) != shape[:2] else None,
                         colour="rgb" if shape[-1] == 3 else "grey", run_name=path.stem)
    r = Run(path=parent, config=config, info=info)
    r.__dict__["model"] = model
    return r
