"""Optuna hyperparameter search, one ``train.train`` run per trial (command line: train/tune.py).

    python -m train.tune --model lenet5 --data ../shared/data/mnist --train-limit 10000 --epochs-max 5
    python -m train.tune --model resnet_small --data train.csv --sampler grid --space space.yaml
    python -m train.tune ... --study-name lenet --storage sqlite:///tune.db     # resumable
    python -m train.train --config OUT/best_config.yaml                         # train the winner

The default space is seed 001's Table III: learning rate (log-uniform 1e-4..0.1; grid 0.001/0.01/0.1),
batch size 32/64/128, epochs up to ``--epochs-max`` (grid N/3, 2N/3, N: Table III's 10/20/30 at
N=30), depth and filter count where the model has options for them (lenet5/alexnet ``width``,
resnet_small ``blocks``/``widths``), and ``dropout``. What a model cannot vary is listed in the output.
A space file maps a scalar TrainConfig field, ``model_kwargs.<option>`` or ``augment.<field>`` to
``{type: float|int|categorical, low, high, log, choices, grid}``. Flags of ``train.train`` set the
base config; a searched parameter given as a flag (``--lr``, ``--model-kw width=1``) is fixed instead.

Writes into ``--out``: ``trials/trial_NNN`` run directories, ``results.csv``, ``results.json`` (with
parameter importances) and ``best_config.yaml``. The library twin is :func:`tune`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import Any, Callable, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from train.config import TrainConfig
from train.data import DataError
from train.errors import ConfigFileError, UsageError

logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
KEEP = ("all", "best")
# Scalar fields that define the data, the split or the output: searching them would compare apples and pears.
NOT_SEARCHABLE = {
    "model", "data", "test_data", "colour", "val_fraction", "test_fraction", "train_limit", "seed", "mixed_precision",
    "distribute", "runs_dir", "run_name", "tensorboard", "verbose",
}
TABLE_III = {"learning_rate": [0.001, 0.01, 0.1], "batch_size": [32, 64, 128]}


class ParamSpec(BaseModel):
    """One searched parameter, as written in a space file."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["float", "int", "categorical"] = Field(description="Distribution kind.")
    low: int | float | None = Field(None, description="Lower bound (float, int).")
    high: int | float | None = Field(None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(False, description="Sample on a log scale (float, int; needs low > 0).")
    choices: list[Any] | None = Field(None, description="Values (categorical): scalars or lists of scalars.")
    grid: list[int | float] | None = Field(None, description="Values the grid sampler visits (float, int).")

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.grid is not None:
                raise ValueError("categorical takes 'choices' only (its choices are its grid)")
            for c in self.choices:
                items = c if isinstance(c, list) else [c]
                if not all(v is None or isinstance(v, (bool, int, float, str)) for v in items):
                    raise ValueError(f"choice {c!r} must be a scalar or a list of scalars")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not 'choices' (use type: categorical)")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low}")
        if self.type == "int" and not all(float(v).is_integer() for v in [self.low, self.high, *(self.grid or [])]):
            raise ValueError("int needs whole-number low, high and grid values")
        if self.grid is not None:
            if not self.grid:
                raise ValueError("'grid' must not be empty")
            outside = [v for v in self.grid if not self.low <= v <= self.high]
            if outside:
                raise ValueError(f"grid values {outside} lie outside [{self.low}, {self.high}]")
        return self

    def grid_values(self) -> list | None:
        """What GridSampler visits: the (encoded) choices, or the numeric ``grid``."""
        return [_encode(c) for c in self.choices] if self.type == "categorical" else self.grid


Space = dict[str, ParamSpec]


def _encode(choice: Any) -> Any:
    """Optuna stores scalar choices only; a list choice (resnet ``blocks``) travels as its JSON text."""
    return json.dumps(choice) if isinstance(choice, list) else choice


def default_space(model: str, epochs_max: int = 30) -> tuple[Space, list[str]]:
    """Seed 001's Table III space for ``model``, and notes on what the model cannot vary."""
    from train.models import model_info

    if epochs_max < 1:
        raise UsageError(f"--epochs-max must be at least 1, got {epochs_max}")
    kwargs = model_info(model)["kwargs"]
    epochs_grid = sorted({max(1, round(epochs_max * k / 3)) for k in (1, 2, 3)})
    space: Space = {
        "learning_rate": ParamSpec(type="float", low=1e-4, high=0.1, log=True, grid=TABLE_III["learning_rate"]),
        "batch_size": ParamSpec(type="categorical", choices=TABLE_III["batch_size"]),
        "epochs": ParamSpec(type="int", low=epochs_grid[0], high=epochs_max, grid=epochs_grid),
    }
    notes = ["filter size (Table III: 3x3/5x5/7x7): no model has a kernel-size option; not searched"]
    if "blocks" in kwargs:
        n = len(kwargs["blocks"])
        space["model_kwargs.blocks"] = ParamSpec(type="categorical", choices=[[k] * n for k in (1, 2, 3)])
    else:
        notes.append(f"depth (Table III: 5/10/15 layers): {model} has no depth option; not searched")
    if "widths" in kwargs:
        space["model_kwargs.widths"] = ParamSpec(
            type="categorical", choices=[[max(1, round(w * f)) for w in kwargs["widths"]] for f in (0.5, 1, 1.5)]
        )
    elif "width" in kwargs:
        space["model_kwargs.width"] = ParamSpec(type="float", low=0.5, high=2.0, grid=[0.5, 1.0, 2.0])
    else:
        notes.append(f"filter count: {model} has no width option; not searched")
    if "dropout" in kwargs:
        space["model_kwargs.dropout"] = ParamSpec(type="float", low=0.0, high=0.5, grid=[0.0, 0.25, 0.5])
    return space, notes


def load_space(path: str | Path) -> Space:
    """Read a space file (YAML or JSON): ``{param: {type, low, high, log, choices, grid}}``."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise ConfigFileError(f"--space {p}: file not found") from e
    except yaml.YAMLError as e:
        raise ConfigFileError(f"--space {p}: cannot parse: {e}") from e
    if not isinstance(raw, dict) or not raw:
        raise ConfigFileError(f"--space {p}: must be a non-empty mapping of param: {{type, low, high, ...}}")
    space: Space = {}
    for name, spec in raw.items():
        try:
            space[str(name)] = ParamSpec.model_validate(spec)
        except ValidationError as e:
            msgs = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'spec'}: {err['msg']}" for err in e.errors())
            raise ConfigFileError(f"--space {p}: param {name!r}: {msgs}") from e
    return space


def _is_scalar(tp: Any) -> bool:
    if get_origin(tp) is Literal:
        return True
    if get_origin(tp) in (Union, UnionType):
        return all(_is_scalar(a) for a in get_args(tp))
    return tp in (bool, int, float, str, type(None))


def searchable(config: TrainConfig) -> list[str]:
    """Parameter names a space may use: scalar TrainConfig fields, ``model_kwargs.<option>`` of
    ``config.model``, and the fields of nested sections the config has (``augment.<field>``)."""
    from train.models import model_info

    fields = TrainConfig.model_fields
    return (
        sorted(n for n, f in fields.items() if _is_scalar(f.annotation) and n not in NOT_SEARCHABLE)
        + [f"model_kwargs.{k}" for k in sorted(model_info(config.model)["kwargs"])]
        + [f"{n}.{sub}" for n in fields if isinstance(v := getattr(config, n), BaseModel) for sub in type(v).model_fields]
    )


def apply_params(config: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """``config`` with searched values set (``model_kwargs.x`` and ``augment.x`` go into the nested dicts)."""
    raw = config.model_dump()
    for name, value in params.items():
        head, _, tail = name.partition(".")
        if tail:
            raw[head][tail] = value
        else:
            raw[name] = value
    return TrainConfig.model_validate(raw)


def check_space(space: Space, config: TrainConfig) -> None:
    """Every name is searchable for ``config.model`` and every bound, grid value and choice is valid."""
    valid = searchable(config)
    for name, spec in space.items():
        if name not in valid:
            raise ConfigFileError(f"space: unknown param {name!r} for model {config.model!r}. Valid: {', '.join(valid)}")
        if name.startswith("model_kwargs."):
            continue  # the model builder judges its own values; a bad one fails its trial
        values = spec.choices if spec.type == "categorical" else [spec.low, spec.high, *(spec.grid or [])]
        for v in values:
            if spec.type == "int":
                v = int(v)
            try:
                apply_params(config, {name: v})
            except ValidationError as e:
                raise ConfigFileError(f"space: param {name!r}: value {v!r} is invalid: {e.errors()[0]['msg']}") from e


def _suggest(trial, name: str, spec: ParamSpec) -> Any:
    try:
        if spec.type == "float":
            return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        if spec.type == "int":
            return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        decoded = {_encode(c): c for c in spec.choices}
        return decoded[trial.suggest_categorical(name, list(decoded))]
    except ValueError as e:  # a resumed study whose stored space differs from this one
        raise UsageError(f"param {name!r}: {e} (the study in --storage was searched with another space)") from e


def _make_sampler(kind: str, space: Space, seed: int, trials: int):
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler({n: s.grid_values() for n, s in space.items()}, seed=seed)
    # Optuna's default waits 10 random trials before modelling; small budgets get a shorter start.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, trials // 3)))


def _make_pruner(kind: str, startup: int):
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _pruning_callback(trial, metric: str):
    """Keras callback: report ``metric`` to the trial after each epoch; raise TrialPruned when the
    pruner says so and epochs remain (a trial that ran all its epochs counts as complete)."""
    import optuna

    from train._tf import keras

    class ReportAndPrune(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values: list[float] = []

        def on_epoch_end(self, epoch, logs=None):
            self.values.append(float(logs[metric]))
            trial.report(self.values[-1], step=epoch + 1)
            if epoch + 1 < self.params["epochs"] and trial.should_prune():
                raise optuna.TrialPruned(f"{metric} {self.values[-1]:.4f} after epoch {epoch + 1}")

    return ReportAndPrune()


class TrialFailed(RuntimeError):
    """A trial's own settings broke its run (bad model option, out of memory); the search goes on."""


def _check_options(sampler: str, pruner: str, metric: str, keep: str, trials: int, prune_startup: int) -> None:
    for flag, value, valid in (("--sampler", sampler, SAMPLERS), ("--pruner", pruner, PRUNERS),
                               ("--metric", metric, tuple(METRICS)), ("--keep", keep, KEEP)):
        if value not in valid:
            raise UsageError(f"{flag}: unknown value {value!r}. Valid: {', '.join(valid)}")
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    if prune_startup < 0:
        raise UsageError(f"--prune-startup must be >= 0, got {prune_startup}")


def _resolve_space(config: TrainConfig, space: Space | None, notes: list[str] | None, sampler: str) -> tuple[Space, list[str]]:
    """The space to search (default: :func:`default_space`), checked against ``config`` and the sampler."""
    notes = list(notes or [])
    if space is None:
        space, default_notes = default_space(config.model)
        notes += default_notes
    if not space:
        raise UsageError("the search space is empty: every parameter is fixed")
    check_space(space, config)
    missing = [n for n, s in space.items() if s.grid_values() is None]
    if sampler == "grid" and missing:
        raise UsageError(f"--sampler grid: param(s) {', '.join(missing)} have no grid values; add 'grid: [...]' in --space")
    return space, notes


def _objective(config: TrainConfig, space: Space, trials_dir: Path, metric: str) -> Callable:
    """The Optuna objective: one ``run_training`` per trial, valued by the best ``metric`` over its epochs."""
    from train._tf import keras, tf
    from train.fit import run_training

    def objective(trial) -> float:
        params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
        run_name = f"trial_{trial.number:03d}"
        trial.set_user_attr("run_dir", str(trials_dir / run_name))
        run_config = apply_params(config, params).model_copy(
            update={"runs_dir": str(trials_dir), "run_name": run_name, "tensorboard": False, "verbose": 0}
        )
        cb = _pruning_callback(trial, metric)
        try:
            run_training(run_config, evaluate=False, callbacks=[cb])
        except DataError:
            raise
        except (ValueError, tf.errors.OpError) as e:
            trial.set_user_attr("error", str(e).splitlines()[0])
            raise TrialFailed(f"trial {trial.number}: {e}") from e
        finally:
            keras.backend.clear_session()
        return max(cb.values) if METRICS[metric] == "maximize" else min(cb.values)

    return objective


def _importance(study, seed: int) -> dict[str, float] | None:
    """fANOVA importance of each parameter; None unless two completed trials differ in their params."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2:
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return {k: round(v, 4) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def _best(study, config: TrainConfig, space: Space, out: Path, metric: str, keep: str, train_best: bool) -> dict[str, Any]:
    """Write ``best_config.yaml``; with ``keep="best"`` delete the other trials' runs; with
    ``train_best`` retrain the winner with full evaluation. Returns ``best`` (and ``best_run``)."""
    from train.fit import run_training

    best = study.best_trial
    best_config = apply_params(config, {n: _decode(space, n, v) for n, v in best.params.items()})
    path = out / "best_config.yaml"
    finished = sum(t.state.is_finished() for t in study.trials)
    path.write_text(
        f"# best of {finished} trials ({out}): trial {best.number}, {metric} {best.value:.4f}\n"
        f"# python -m train.train --config {path}\n"
        + yaml.safe_dump(best_config.model_dump(mode="json"), sort_keys=False)
    )
    result: dict[str, Any] = {"best": {"trial": best.number, "value": best.value, "params": best.params, "config": str(path),
                                       "run_dir": best.user_attrs.get("run_dir")}}
    if keep == "best":
        for t in study.trials:
            run_dir = t.user_attrs.get("run_dir")
            if t.number != best.number and run_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
    if train_best:
        run_dir = run_training(best_config.model_copy(update={"runs_dir": str(out), "run_name": "best"}))
        metrics = json.loads((run_dir / "metrics.json").read_text())
        result["best_run"] = {"run_dir": str(run_dir),
                              **{f"{k}_accuracy": metrics[k]["accuracy"] for k in ("validation", "test") if metrics.get(k)}}
    return result


def tune(
    config: TrainConfig,
    space: Space | None = None,
    *,
    trials: int = 20,
    sampler: str = "tpe",
    pruner: str = "median",
    prune_startup: int = 3,
    metric: str = "val_accuracy",
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    out_dir: str | Path | None = None,
    keep: str = "all",
    notes: list[str] | None = None,
    train_best: bool = False,
) -> dict[str, Any]:
    """Search ``space`` (default: :func:`default_space`) around ``config``; return the results dict.

    Every trial is ``run_training(config + params, evaluate=False)``; its value is the best
    ``metric`` over its epochs. ``keep="best"`` deletes the other trials' run directories.
    Raises :class:`~train.errors.UsageError` for bad options, :class:`~train.errors.ConfigFileError`
    for a space that does not fit the config.
    """
    import optuna

    _check_options(sampler, pruner, metric, keep, trials, prune_startup)
    space, notes = _resolve_space(config, space, notes, sampler)
    out = Path(out_dir or Path(config.runs_dir) / f"tune-{config.model}-{datetime.now():%Y%m%d-%H%M%S}")
    trials_dir = out / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    direction = METRICS[metric]
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction, load_if_exists=True,
                                pruner=_make_pruner(pruner, prune_startup))
    # A resumed study continues the sampler's random stream instead of replaying its first trials.
    study.sampler = _make_sampler(sampler, space, config.seed + len(study.trials), trials)
    logger.info("%s search of %s: %d trials over %s into %s", sampler, config.model, trials, ", ".join(space), out)
    if sampler == "grid":
        logger.info("the grid has %d points", math.prod(len(s.grid_values()) for s in space.values()))

    t0 = time.perf_counter()
    study.optimize(_objective(config, space, trials_dir, metric), n_trials=trials, timeout=timeout, catch=(TrialFailed,))
    result: dict[str, Any] = {
        "model": config.model, "data": config.data, "study_name": study.study_name, "sampler": sampler,
        "pruner": pruner, "metric": metric, "direction": direction, "seconds": round(time.perf_counter() - t0, 1),
        "space": {n: s.model_dump(exclude_defaults=True) for n, s in space.items()}, "notes": notes,
        "trials": _rows(study, metric, direction), "importance": _importance(study, config.seed), "best": None,
        "out_dir": str(out),
    }
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        result.update(_best(study, config, space, out, metric, keep, train_best))
    _write_results(result, out)
    return result


def _decode(space: Space, name: str, value: Any) -> Any:
    """Optuna's stored value back to the config value (a resumed study may hold params of an older space)."""
    spec = space.get(name)
    return {_encode(c): c for c in spec.choices}[value] if spec and spec.type == "categorical" else value


def _rows(study, metric: str, direction: str) -> list[dict[str, Any]]:
    """One row per finished trial: number, state, best metric value, epochs run, seconds, params, error."""
    import optuna

    pick = max if direction == "maximize" else min
    rows = []
    for t in study.trials:
        if not t.state.is_finished():
            continue
        steps = t.intermediate_values
        value = t.value if t.state == optuna.trial.TrialState.COMPLETE else (pick(steps.values()) if steps else None)
        rows.append({
            "trial": t.number,
            "state": "failed" if t.state.name == "FAIL" else t.state.name.lower(),
            metric: None if value is None or math.isnan(value) else round(value, 4),
            "epochs_run": len(steps),
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
            "params": t.params,
            "error": t.user_attrs.get("error"),
        })
    return rows


def _write_results(result: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    metric = result["metric"]
    names = sorted({k for r in result["trials"] for k in r["params"]})
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "state", metric, "epochs_run", "seconds", *names, "error"])
        for r in result["trials"]:
            w.writerow([r["trial"], r["state"], r[metric], r["epochs_run"], r["seconds"],
                        *(r["params"].get(n, "") for n in names), r["error"] or ""])


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_result(result: dict[str, Any]) -> str:
    """The results table, importances, notes and the best trial, for stdout."""
    metric = result["metric"]
    lines = [f"{result['sampler']} search of {result['model']} on {result['data']}: {len(result['trials'])} trials, "
             f"pruner {result['pruner']}, {result['seconds']:.0f} s",
             f"{'trial':>5}  {'state':<8} {metric:>12} {'epochs':>6} {'seconds':>8}  params"]
    for r in result["trials"]:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
        value = "-" if r[metric] is None else f"{r[metric]:.4f}"
        lines.append(f"{r['trial']:>5}  {r['state']:<8} {value:>12} {r['epochs_run']:>6} {_fmt(r['seconds']):>8}  {params}")
        if r["error"]:
            lines.append(f"{'':>7}error: {r['error']}")
    if result["importance"]:
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in result["importance"].items()))
    lines += [f"note: {n}" for n in result["notes"]]
    best = result["best"]
    if best:
        lines.append(f"best: trial {best['trial']}, {metric} {best['value']:.4f}; config {best['config']}")
    else:
        lines.append("best: none (no trial completed)")
    if "best_run" in result:
        lines.append("best retrained: " + ", ".join(f"{k} {_fmt(v)}" for k, v in result["best_run"].items()))
    lines.append(f"written: {Path(result['out_dir']) / 'results.csv'}, results.json")
    return "\n".join(lines)
