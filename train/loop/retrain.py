"""Fine-tune a trained run on labelled feedback without forgetting what it knew, then export.

    python -m train.retrain --base runs/lenet5-mnist --feedback feedback/ --bundle bundles/rpi
    python -m train.retrain --base runs/X --feedback feedback/ --target coral --ewc 200
    python -m train.retrain --base runs/X --feedback extra_digits/ --no-replay --no-export

``--feedback`` is a store written by ``train.collect`` and labelled with ``train.label`` (only
labelled samples are used; each sample's ``model_input``, what the device's preprocessing fed
the model, is the training image) or any dataset ``train.data.load_dataset`` reads.

The labelled samples are split (stratified, seeded) into a part to learn from and a held-out
part to judge on. Fine-tuning mixes the learning part with a replay set drawn (stratified) from
the base run's own training split, so the classes it knew are rehearsed while the new domain is
learnt; ``--feedback-share`` is the share of each epoch that comes from the feedback (by
oversampling it). ``--ewc LAMBDA`` adds elastic weight consolidation (Kirkpatrick et al. 2017):
a penalty ``LAMBDA/2 * sum F_i (w_i - w*_i)^2`` with ``F`` the diagonal Fisher information of the
base model on its training data.

The report (``retrain.json`` in the new run directory, and printed) gives accuracy on the base
run's validation and test sets and on the feedback's held-out part, before and after. The new run
is exported with the target of ``--bundle`` (the bundle the devices run now; its name is kept and
the version is the new run's) or ``--target``.

Exit codes: 0 ok, 2 bad arguments, 3 base run not found, 5 feedback unusable (none labelled,
unknown labels, wrong image size), 6 forgetting above ``--max-forgetting`` or an exported artefact
below the export accuracy gate (everything is still written), 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from train.data import DataError, Dataset, load_dataset, stratified_sample
from train.runs import MODEL_FILE, Run, RunError, load_run, mark_latest

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_RUN, EXIT_DATA, EXIT_GATE = 0, 1, 2, 3, 5, 6
REPORT_FILE = "retrain.json"


@dataclass
class RetrainSettings:
    holdout: float = 0.3            # share of the labelled feedback kept out of fine-tuning, to judge on
    replay: int | None = None       # replayed original images per epoch (None: 20 x the feedback, >= 2000)
    feedback_share: float = 0.3     # share of each epoch drawn from the feedback (oversampled)
    epochs: int = 5
    learning_rate: float = 3e-4
    batch_size: int = 64
    ewc: float = 0.0                # EWC strength (0: off)
    fisher_samples: int = 500
    seed: int = 42


# --------------------------------------------------------------------------------------------
# Feedback -> Dataset
# --------------------------------------------------------------------------------------------
def _fit_image(img: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    import cv2

    h, w, c = shape
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if c == 1 and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif c == 3 and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif c == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return img.reshape(h, w, c).astype(np.uint8)


def load_feedback(spec: str | Path, class_names: list[str], input_shape: tuple[int, int, int]) -> Dataset:
    """Labelled feedback as a Dataset in the model's input space.

    A ``train.collect`` store (a folder with ``index.sqlite``) gives its labelled samples, each as
    the ``model_input`` the device saw (or the frame fitted to the input when the device did not
    send one); anything else goes through ``load_dataset``. Labels must be among ``class_names``.
    """
    path = Path(spec)
    if (path / "index.sqlite").is_file():
        from train.loop.store import FeedbackStore

        samples = FeedbackStore(path).labelled()
        if not samples:
            raise DataError(f"{path}: no labelled samples yet; label them with python -m train.label {path}")
        unknown = sorted({s.label for s in samples} - set(class_names))
        if unknown:
            raise DataError(f"{path}: labels {unknown} are not classes of the base model; valid: {class_names} "
                            "(adding classes needs a new training run)")
        xs, ys, ids, groups = [], [], [], []
        fitted = 0
        for s in samples:
            img = s.model_input()
            if img is None or img.shape[:2] != input_shape[:2]:
                img, fitted = s.image(), fitted + 1
            xs.append(_fit_image(img, input_shape))
            ys.append(class_names.index(s.label))
            ids.append(s.id)
            groups.append(s.device)
        if fitted:
            logger.warning("%d of %d feedback samples had no model input of shape %s; their frames were resized",
                           fitted, len(samples), input_shape)
        return Dataset(np.stack(xs), np.array(ys), class_names, source=str(path), ids=np.array(ids),
                       groups=np.array(groups))
    ds = load_dataset(str(path), image_size=input_shape[:2], colour="rgb" if input_shape[-1] == 3 else "grey")
    if ds.y is None:
        raise DataError(f"{path}: the feedback has no labels")
    if ds.class_names != class_names:
        unknown = sorted(set(ds.class_names) - set(class_names))
        if unknown:
            raise DataError(f"{path}: classes {unknown} are not classes of the base model; valid: {class_names}")
        remap = np.array([class_names.index(c) for c in ds.class_names])
        ds = Dataset(ds.x, remap[ds.y], class_names, source=ds.source, ids=ds.ids, groups=ds.groups)
    return ds


def split_feedback(ds: Dataset, holdout: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(learn, held_out): stratified where every class has two samples, else random."""
    if holdout <= 0:
        return ds, None
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(ds))
    n_hold = int(round(holdout * len(ds)))
    if n_hold < 1 or n_hold >= len(ds):
        raise DataError(f"{ds.source}: {len(ds)} labelled samples are too few to hold out {holdout:.0%}")
    counts = np.bincount(ds.y)
    strat = ds.y if counts[counts > 0].min() >= 2 and n_hold >= (counts > 0).sum() else None
    learn, hold = train_test_split(idx, test_size=n_hold, stratify=strat, random_state=seed)
    return ds.subset(np.sort(learn)), ds.subset(np.sort(hold))


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------
def fisher_diagonal(model, ds: Dataset, n: int = 500, seed: int = 42) -> list:
    """Empirical diagonal Fisher information of ``model`` on ``n`` samples of ``ds`` (per-sample
    squared gradients of the log-likelihood of the true label, averaged)."""
    from train._tf import tf

    sub = stratified_sample(ds, min(n, len(ds)), seed=seed) if n < len(ds) else ds
    weights = model.trainable_variables

    @tf.function
    def sq_grads(x, y):
        with tf.GradientTape() as tape:
            p = model(x[None], training=False)
            nll = -tf.math.log(tf.gather(p[0], y) + 1e-8)
        return [tf.square(g) if g is not None else tf.zeros_like(w) for g, w in zip(tape.gradient(nll, weights), weights)]

    total = [np.zeros(w.shape, np.float32) for w in weights]
    for x, y in zip(sub.x.astype(np.float32), sub.y):
        for t, g in zip(total, sq_grads(tf.constant(x), tf.constant(int(y)))):
            t += g.numpy()
    return [t / len(sub) for t in total]


def _oversample(ds: Dataset, n: int, rng) -> Dataset:
    reps = [np.arange(len(ds))] * (n // len(ds)) + [rng.choice(len(ds), n % len(ds), replace=False)]
    return ds.subset(rng.permutation(np.concatenate(reps)))


def _mix(learn: Dataset, replay: Dataset | None, share: float, seed: int, epoch_size: int) -> Dataset:
    """One epoch of ``epoch_size`` images: ``share`` of them feedback (oversampled), the rest replay.

    Without replay the whole epoch is feedback, so both variants take the same number of steps.
    """
    rng = np.random.default_rng(seed)
    if replay is None or len(replay) == 0:
        return _oversample(learn, max(epoch_size, len(learn)), rng)
    n_fb = max(len(learn), int(round(share * epoch_size)))
    fb = _oversample(learn, n_fb, rng)
    rp = _oversample(replay, max(1, epoch_size - n_fb), rng) if epoch_size - n_fb != len(replay) else replay
    return Dataset(np.concatenate([rp.x, fb.x]), np.concatenate([rp.y, fb.y]), learn.class_names,
                   source=f"replay({len(rp)})+feedback({len(learn)}x{n_fb / len(learn):.1f})")


def epoch_size(n_learn: int, settings: RetrainSettings) -> int:
    """Images per fine-tuning epoch: the replay set plus its feedback share."""
    n_replay = settings.replay if settings.replay is not None else max(2000, 20 * n_learn)
    return int(round(n_replay / (1 - settings.feedback_share)))


def finetune(model, learn: Dataset, replay: Dataset | None, settings: RetrainSettings,
             fisher_data: Dataset | None = None) -> dict[str, list[float]]:
    """Fine-tune ``model`` in place on ``learn`` (+ ``replay``); EWC when ``settings.ewc`` > 0."""
    from train._tf import keras, tf
    from train.data.pipeline import make_tf_dataset

    keras.utils.set_random_seed(settings.seed)
    if settings.ewc > 0:
        if fisher_data is None:
            raise ValueError("EWC needs the original training data to estimate the Fisher information")
        fisher = [tf.constant(f) for f in fisher_diagonal(model, fisher_data, settings.fisher_samples, settings.seed)]
        anchors = [tf.constant(w.numpy()) for w in model.trainable_variables]
        lam = float(settings.ewc)
        weights = model.trainable_variables

        def ewc_penalty():
            return (lam / 2.0) * tf.add_n([tf.reduce_sum(f * tf.square(w - a))
                                           for f, w, a in zip(fisher, weights, anchors)])

        model.add_loss(ewc_penalty)
    data = _mix(learn, replay, settings.feedback_share, settings.seed, epoch_size(len(learn), settings))
    model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(make_tf_dataset(data, settings.batch_size, training=True, seed=settings.seed),
                     epochs=settings.epochs, verbose=0)
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def accuracy(model, ds: Dataset | None) -> float | None:
    if ds is None or len(ds) == 0:
        return None
    p = model.predict(ds.x.astype(np.float32), batch_size=512, verbose=0)
    return float((p.argmax(1) == ds.y).mean())


def _per_class(model, ds: Dataset | None) -> dict[str, float] | None:
    if ds is None or len(ds) == 0:
        return None
    pred = model.predict(ds.x.astype(np.float32), batch_size=512, verbose=0).argmax(1)
    return {ds.class_names[c]: round(float((pred[ds.y == c] == c).mean()), 4) for c in np.unique(ds.y)}


# --------------------------------------------------------------------------------------------
# The whole job
# --------------------------------------------------------------------------------------------
@dataclass
class RetrainResult:
    run_dir: Path
    report: dict[str, Any]
    bundle: Path | None = None
    failures: list[str] | None = None


def _evaluate_all(model, splits: dict, held_out: Dataset | None, learn: Dataset) -> dict[str, Any]:
    return {
        "original_val": accuracy(model, splits.get("val")),
        "original_test": accuracy(model, splits.get("test")),
        "feedback_held_out": accuracy(model, held_out),
        "feedback_learn": accuracy(model, learn),
        "feedback_held_out_per_class": _per_class(model, held_out),
    }


def retrain(base: str | Path | Run, feedback: str | Path, *, settings: RetrainSettings | None = None,
            replay: bool = True, out_dir: str | Path | None = None, run_name: str | None = None,
            bundle: str | Path | None = None, target: str | None = None, export: bool = True,
            version: str | None = None, max_forgetting: float = 0.5, export_kwargs: dict | None = None) -> RetrainResult:
    """Fine-tune ``base`` on ``feedback``, write a new run (and a bundle); see the module doc.

    ``max_forgetting`` (percentage points): the largest drop of the base run's test accuracy (its
    validation accuracy when it has no test set) accepted; a larger one is listed in
    ``RetrainResult.failures``. Raises ``RunError`` and ``DataError`` for unusable input.
    """
    from train._tf import keras

    s = settings or RetrainSettings()
    t0 = time.perf_counter()
    run = base if isinstance(base, Run) else load_run(base)
    base_manifest = None
    if bundle is not None:
        from sdk.bundle import BundleError, load_manifest

        try:
            base_manifest = load_manifest(bundle)
        except BundleError as e:
            raise RunError(str(e)) from e
        target = target or base_manifest.target
    if export and target is None:
        raise ValueError("say where the new model goes: --bundle BUNDLE (the bundle devices run now) or --target T, "
                         "or --no-export")
    class_names, input_shape = run.class_names, run.input_shape
    fb = load_feedback(feedback, class_names, input_shape)
    learn, held_out = split_feedback(fb, s.holdout, s.seed)
    logger.info("feedback %s: %d labelled, %d to learn from, %d held out", feedback, len(fb), len(learn),
                len(held_out) if held_out is not None else 0)

    splits = run.splits()
    original = splits["train"]
    replay_set = None
    if replay:
        n = epoch_size(len(learn), s) - int(round(s.feedback_share * epoch_size(len(learn), s)))
        replay_set = stratified_sample(original, min(n, len(original)), seed=s.seed)

    model = keras.models.load_model(run.model_path)
    before = _evaluate_all(model, splits, held_out, learn)
    t_fit = time.perf_counter()
    history = finetune(model, learn, replay_set, s, fisher_data=original)
    fit_seconds = time.perf_counter() - t_fit
    after = _evaluate_all(model, splits, held_out, learn)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Path(out_dir) if out_dir is not None else run.path.parent
    run_dir = root / (run_name or f"{run.path.name}-retrain-{stamp}")
    run_dir.mkdir(parents=True, exist_ok=False)
    # Saved without the EWC penalty: it only matters while fine-tuning.
    clean = keras.models.clone_model(model) if model.losses else model
    if clean is not model:
        clean.set_weights(model.get_weights())
    clean.save(run_dir / MODEL_FILE)
    (run_dir / "config.json").write_text(run.config.model_copy(update={"run_name": run_dir.name}).model_dump_json(indent=2) + "\n")
    (run_dir / "labels.txt").write_text("\n".join(class_names) + "\n")
    info = dict(run.info)
    info.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parent_run": str(run.path),
                 "train_seconds": round(fit_seconds, 2), "retrain": True})
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")

    key = "original_test" if before["original_test"] is not None else "original_val"
    drop_pt = (before[key] - after[key]) * 100
    failures = []
    if drop_pt > max_forgetting:
        failures.append(f"{key} accuracy fell by {drop_pt:.2f} pt (from {before[key]:.4f} to {after[key]:.4f}); "
                        f"--max-forgetting is {max_forgetting} pt")
    report: dict[str, Any] = {
        "base_run": str(run.path), "run": str(run_dir), "feedback": str(feedback),
        "settings": {**s.__dict__, "replay": len(replay_set) if replay_set is not None else 0},
        "feedback_counts": {"labelled": len(fb), "learn": len(learn), "held_out": len(held_out) if held_out is not None else 0,
                            "per_class": {class_names[c]: int(n) for c, n
                                          in enumerate(np.bincount(fb.y, minlength=len(class_names))) if n}},
        "before": before, "after": after, "forgetting_pt": round(drop_pt, 3), "forgetting_on": key,
        "gain_held_out_pt": None if before["feedback_held_out"] is None
        else round((after["feedback_held_out"] - before["feedback_held_out"]) * 100, 3),
        "history": history, "fit_seconds": round(fit_seconds, 2),
    }
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")

    bundle_out = None
    if export:
        from train.export import export_bundle

        # Calibrate the quantization on both domains: the original training split and the feedback.
        calib = original if replay_set is None else replay_set
        calib = Dataset(np.concatenate([calib.x, learn.x]), np.concatenate([calib.y, learn.y]), class_names)
        kw = dict(export_kwargs or {})
        if base_manifest is not None:
            kw.setdefault("name", base_manifest.name)
            kw.setdefault("preprocess", base_manifest.input.preprocess)
            if base_manifest.num_threads:
                kw.setdefault("threads", base_manifest.num_threads)
        result = export_bundle(target, run_dir, run_dir / "bundles" / target, version=version or run_dir.name,
                               splits={"train": calib, "val": splits["val"], "test": splits["test"]}, **kw)
        bundle_out = result.bundle_dir
        failures += [f"export gate: {f}" for f in result.failures]
        report["bundle"] = str(bundle_out)
        report["bundle_version"] = result.manifest.version
        report["export_failures"] = result.failures
    report["total_seconds"] = round(time.perf_counter() - t0, 2)
    report["failures"] = failures
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    mark_latest(run_dir)
    return RetrainResult(run_dir=run_dir, report=report, bundle=bundle_out, failures=failures)


def format_report(report: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{v * 100:.2f}%"

    b, a = report["before"], report["after"]
    rows = [("original validation", "original_val"), ("original test", "original_test"),
            ("feedback held-out", "feedback_held_out"), ("feedback learnt", "feedback_learn")]
    c = report["feedback_counts"]
    lines = [f"retrained {report['base_run']} -> {report['run']}",
             f"feedback: {c['labelled']} labelled ({c['learn']} learnt, {c['held_out']} held out); "
             f"replay {report['settings']['replay']}; EWC {report['settings']['ewc']}",
             f"{'accuracy':<22}{'before':>10}{'after':>10}"]
    lines += [f"{name:<22}{pct(b[k]):>10}{pct(a[k]):>10}" for name, k in rows]
    lines.append(f"forgetting on {report['forgetting_on']}: {report['forgetting_pt']:.2f} pt; "
                 f"gain on the feedback held-out part: {report['gain_held_out_pt']} pt")
    if report.get("bundle"):
        lines.append(f"bundle: {report['bundle']}")
    lines += [f"FAILED: {f}" for f in report.get("failures", [])]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.retrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the training run the devices' model came from")
    p.add_argument("--feedback", required=True, help="a train.collect store, or any dataset train.data reads")
    p.add_argument("--bundle", help="the bundle the devices run now: its target and name are reused")
    p.add_argument("--target", help="export target when no --bundle is given (rpi, coral, jetson, cpu)")
    p.add_argument("--no-export", action="store_true", help="write the run only")
    p.add_argument("--version", help="version of the new bundle (default: the new run's name)")
    p.add_argument("--out", help="where the new run directory goes (default: beside the base run)")
    p.add_argument("--name", help="name of the new run directory")
    p.add_argument("--holdout", type=float, default=0.3, help="share of the feedback held out to judge on (0..0.9)")
    p.add_argument("--replay", type=int, help="original training images replayed (default: 20x the feedback, >= 2000)")
    p.add_argument("--no-replay", action="store_true", help="fine-tune on the feedback alone (forgets; for comparison)")
    p.add_argument("--feedback-share", type=float, default=0.3, help="share of each epoch drawn from the feedback")
    p.add_argument("--ewc", type=float, default=0.0,
                   help="elastic weight consolidation strength (0: off; the Fisher of a confident model is small, "
                        "so useful values are large: 1e5..1e7)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-forgetting", type=float, default=0.5,
                   help="largest accepted drop of the base test accuracy, in percentage points (exit 6 above it)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = []
    if not 0 <= args.holdout < 0.9:
        problems.append(f"--holdout must be in [0, 0.9), got {args.holdout}")
    if not 0 < args.feedback_share < 1:
        problems.append(f"--feedback-share must be in (0, 1), got {args.feedback_share}")
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.ewc < 0:
        problems.append("--lr must be > 0 and --ewc >= 0")
    if args.replay is not None and args.replay < 1:
        problems.append("--replay must be >= 1 (or use --no-replay)")
    if not args.no_export and not (args.bundle or args.target):
        problems.append("give --bundle (the bundle devices run now) or --target, or --no-export")
    if args.target:
        from train.export.targets import list_targets

        if args.target not in list_targets():
            problems.append(f"unknown --target {args.target!r}; valid: {', '.join(list_targets())}")
    if problems:
        parser.error("; ".join(problems))
    from train.export import ExportError
    from train.export.compress import CalibrationError

    settings = RetrainSettings(holdout=args.holdout, replay=args.replay, feedback_share=args.feedback_share,
                               epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, ewc=args.ewc,
                               seed=args.seed)
    try:
        res = retrain(args.base, args.feedback, settings=settings, replay=not args.no_replay, out_dir=args.out,
                      run_name=args.name, bundle=args.bundle, target=args.target, export=not args.no_export,
                      version=args.version, max_forgetting=args.max_forgetting)
    except (RunError, DataError, ExportError, CalibrationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_RUN if isinstance(e, RunError) else EXIT_DATA)
    print(format_report(res.report))
    return EXIT_GATE if res.failures else EXIT_OK
