"""Fine-tune a trained run on labelled feedback without forgetting what it knew, then export.

The library of ``python -m train.retrain`` (its doc says what the job does, flag by flag):
:func:`load_feedback` turns a feedback store (or any dataset) into model inputs,
:func:`split_feedback` holds part of it out to judge on, :func:`finetune` mixes it with replay
(and EWC), and :func:`retrain` runs the whole job: a new run directory, ``retrain.json``, a bundle.

A stored sample's ``model_input`` (what the device fed the model) is its training image as it
is. A frame without one (or with one of another shape) goes through the device's own
preprocessing, :class:`sdk.preprocess.Preprocessor` built from the base bundle's manifest (colour,
resize mode, polarity, digit mode), with a device config's ``preprocess`` settings (mode, region
of interest, resize, invert) on top when given: samples do not record those. A region sample
(a device classifying named regions) records its region's pixel box: its frame is cropped to that
box, not to the config's ``roi`` (which applies only to samples without a region), and fitted
with the config's resize mode for that region when the config names it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from sdk.bundle import BundleError, InputSpec, Manifest, load_manifest
from sdk.config import PreprocessSettings
from sdk.preprocess import Preprocessor
from train.data import DataError, Dataset, load_dataset, stratified_sample
from train.errors import UsageError
from train.loop.samples import Sample
from train.loop.store import FeedbackStore
from train.runs import MODEL_FILE, Run, RunError, load_run, mark_latest

logger = logging.getLogger(__name__)

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
def frame_preprocessor(input_shape: tuple[int, int, int], manifest: Manifest | None = None,
                       settings: PreprocessSettings | None = None, *, box: Sequence[int] | None = None,
                       region: str | None = None) -> Preprocessor:
    """The device's preprocessing of a frame, at the run's input size (height, width, channels).

    ``manifest``: the bundle the devices ran (its colour, resize mode, polarity and digit mode);
    ``settings``: their config's ``preprocess`` section (mode, ROI, resize, invert). Without a
    manifest, a plain stretch resize in the run's colour, never inverted. ``box``: a region
    sample's ``[x, y, w, h]`` in pixels of the frame, which replaces the config's ROI; ``region``:
    its name, whose ``resize`` the config's ``regions`` may set.
    """
    h, w, c = input_shape
    shape = [1, h, w, c]
    if manifest is not None:
        spec = manifest.input.model_copy(update={"shape": shape})
    else:
        spec = InputSpec(shape=shape, dtype="float32", colour="rgb" if c == 3 else "grey")
    s = settings or PreprocessSettings()
    roi, resize = s.roi, s.resize
    if box is not None:
        roi = [int(v) for v in box]
        named = (s.regions or {}).get(region) if region is not None else None
        if named is not None and named.resize != "auto":
            resize = named.resize
    # Only Preprocessor.image() is used (the run's model takes raw pixels), so the dtype is moot.
    detail = {"shape": shape, "dtype": np.float32, "quantization": (0.0, 0)}
    return Preprocessor(spec, detail, mode=s.mode, roi=roi, invert=s.invert, resize_mode=resize)


def model_image(pre: Preprocessor, frame: np.ndarray) -> np.ndarray:
    """A frame as the model's uint8 HxWxC picture (0..255, before normalization), as ``pre`` makes it."""
    img = pre.image(frame)
    if img.ndim == 2 and pre.channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and pre.channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return img.reshape(pre.height, pre.width, pre.channels)


def _fits(img: np.ndarray, shape: tuple[int, int, int]) -> bool:
    return img.shape[:2] == tuple(shape[:2]) and (img.shape[2] if img.ndim == 3 else 1) == shape[2]


def _from_frame(s: Sample, shape: tuple[int, int, int], manifest: Manifest | None,
                settings: PreprocessSettings | None, cache: dict) -> np.ndarray | None:
    """A sample's frame as the model's picture: through the device's preprocessing, cropped to its
    region's box (one Preprocessor per box, kept in ``cache``). None, with a warning, when the box
    does not fit the stored frame (a frame sent downscaled: the box is in the captured frame's pixels)."""
    frame = s.image()
    if s.region_box is not None:
        x, y, w, h = s.region_box
        if x + w > frame.shape[1] or y + h > frame.shape[0]:
            logger.warning("sample %d left out: region %r box %s reaches outside its %dx%d frame (sent downscaled?)",
                           s.id, s.region, list(s.region_box), frame.shape[1], frame.shape[0])
            return None
    key = (s.region_box, s.region if s.region_box is not None else None)
    if key not in cache:
        cache[key] = frame_preprocessor(shape, manifest, settings, box=s.region_box, region=s.region)
    return model_image(cache[key], frame)


def _store_dataset(path: Path, class_names: list[str], input_shape: tuple[int, int, int], manifest: Manifest | None,
                   settings: PreprocessSettings | None) -> Dataset:
    with FeedbackStore(path) as store:
        samples = store.labelled()
    if not samples:
        raise DataError(f"{path}: no labelled samples yet; label them with python -m train.label {path}")
    unknown = sorted({s.label for s in samples} - set(class_names))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not classes of the base model; valid: {class_names} "
                        "(adding classes needs a new training run)")
    shape = tuple(input_shape)
    xs, kept, from_frames, cache = [], [], 0, {}
    for s in samples:
        img = s.model_input()
        if img is None or not _fits(img, shape):
            img = _from_frame(s, shape, manifest, settings, cache)
            if img is None:
                continue
            from_frames += 1
        xs.append(img.reshape(shape).astype(np.uint8, copy=False))
        kept.append(s)
    if from_frames:
        how = "the bundle's preprocessing" if manifest is not None else "a plain resize (no bundle given)"
        log = logger.info if manifest is not None else logger.warning
        log("%d of %d feedback samples had no model input of shape %s; their frames went through %s",
            from_frames, len(samples), shape, how)
    if not kept:
        raise DataError(f"{path}: none of the {len(samples)} labelled samples could be made a model input")
    return Dataset(np.stack(xs), np.array([class_names.index(s.label) for s in kept]), class_names,
                   source=str(path), ids=np.array([s.id for s in kept]), groups=np.array([s.device for s in kept]))


def load_feedback(spec: str | Path, class_names: list[str], input_shape: tuple[int, int, int], *,
                  manifest: Manifest | None = None, preprocess: PreprocessSettings | None = None) -> Dataset:
    """Labelled feedback as a Dataset in the model's input space.

    A ``train.collect`` store (a folder with ``index.sqlite``) gives its labelled samples, each as
    the ``model_input`` the device saw, or its frame (cropped to its region's box, for a region
    sample) through :func:`frame_preprocessor` (``manifest``, ``preprocess``) when the device sent
    none of the input's shape; anything else goes through ``load_dataset``. Labels must be among
    ``class_names``.
    """
    path = Path(spec)
    if (path / "index.sqlite").is_file():
        return _store_dataset(path, class_names, input_shape, manifest, preprocess)
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


def mix_epoch(learn: Dataset, replay: Dataset | None, share: float, seed: int, epoch_size: int) -> Dataset:
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
    data = mix_epoch(learn, replay, settings.feedback_share, settings.seed, epoch_size(len(learn), settings))
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


def _open_base(base: str | Path | Run, bundle: str | Path | None) -> tuple[Run, Manifest | None]:
    """The base run, and the manifest of the bundle the devices run now (when given)."""
    run = base if isinstance(base, Run) else load_run(base)
    if bundle is None:
        return run, None
    try:
        return run, load_manifest(bundle)
    except BundleError as e:
        raise RunError(str(e)) from e


def _replay_set(original: Dataset, n_learn: int, s: RetrainSettings) -> Dataset:
    """A stratified sample of the base run's training split: the replay part of every epoch."""
    size = epoch_size(n_learn, s)
    n = size - int(round(s.feedback_share * size))
    return stratified_sample(original, min(n, len(original)), seed=s.seed)


def _write_run(run: Run, model, run_dir: Path, fit_seconds: float) -> None:
    """The new run directory: model, config, labels and run.json (with ``parent_run``)."""
    from train._tf import keras

    run_dir.mkdir(parents=True, exist_ok=False)
    # Saved without the EWC penalty: it only matters while fine-tuning.
    clean = keras.models.clone_model(model) if model.losses else model
    if clean is not model:
        clean.set_weights(model.get_weights())
    clean.save(run_dir / MODEL_FILE)
    config = run.config.model_copy(update={"run_name": run_dir.name})
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    (run_dir / "labels.txt").write_text("\n".join(run.class_names) + "\n")
    info = dict(run.info)
    info.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parent_run": str(run.path),
                 "train_seconds": round(fit_seconds, 2), "retrain": True})
    (run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")


def _forgetting(before: dict, after: dict, max_forgetting: float) -> tuple[str, float, list[str]]:
    """``(split, drop in points, failures)``: the base test accuracy (validation without a test set)."""
    key = "original_test" if before["original_test"] is not None else "original_val"
    drop_pt = (before[key] - after[key]) * 100
    failures = []
    if drop_pt > max_forgetting:
        failures.append(f"{key} accuracy fell by {drop_pt:.2f} pt (from {before[key]:.4f} to {after[key]:.4f}); "
                        f"--max-forgetting is {max_forgetting} pt")
    return key, drop_pt, failures


def _counts(fb: Dataset, learn: Dataset, held_out: Dataset | None) -> dict[str, Any]:
    return {"labelled": len(fb), "learn": len(learn), "held_out": len(held_out) if held_out is not None else 0,
            "per_class": {fb.class_names[c]: int(n) for c, n
                          in enumerate(np.bincount(fb.y, minlength=len(fb.class_names))) if n}}


def _export(run_dir: Path, target: str, splits: dict, calib: Dataset, learn: Dataset, base_manifest: Manifest | None,
            version: str | None, export_kwargs: dict | None):
    """Export the new run for ``target``, calibrated on both domains (original training images and feedback)."""
    from train.export import export_bundle

    calib = Dataset(np.concatenate([calib.x, learn.x]), np.concatenate([calib.y, learn.y]), learn.class_names)
    kw = dict(export_kwargs or {})
    if base_manifest is not None:
        kw.setdefault("name", base_manifest.name)
        kw.setdefault("preprocess", base_manifest.input.preprocess)
        if base_manifest.num_threads:
            kw.setdefault("threads", base_manifest.num_threads)
    return export_bundle(target, run_dir, run_dir / "bundles" / target, version=version or run_dir.name,
                         splits={"train": calib, "val": splits["val"], "test": splits["test"]}, **kw)


def retrain(base: str | Path | Run, feedback: str | Path, *, settings: RetrainSettings | None = None,
            replay: bool = True, out_dir: str | Path | None = None, run_name: str | None = None,
            bundle: str | Path | None = None, target: str | None = None, export: bool = True,
            version: str | None = None, max_forgetting: float = 0.5, export_kwargs: dict | None = None,
            preprocess: PreprocessSettings | None = None) -> RetrainResult:
    """Fine-tune ``base`` on ``feedback``, write a new run (and a bundle); see the module doc.

    ``bundle``: the bundle the devices run now (its manifest preprocesses stored frames; its target,
    name, preprocessing mode and threads are kept for the export). ``preprocess``: the devices'
    config's ``preprocess`` section, for frames. ``max_forgetting`` (percentage points): the largest
    drop of the base run's test accuracy (its validation accuracy when it has no test set) accepted;
    a larger one is listed in ``RetrainResult.failures``, as are export gate failures. Raises
    ``RunError`` (base run or bundle unusable), ``DataError`` / ``FeedbackError`` (feedback unusable)
    and ``UsageError`` (nowhere to export to).
    """
    from train._tf import keras

    s = settings or RetrainSettings()
    t0 = time.perf_counter()
    run, base_manifest = _open_base(base, bundle)
    target = target or (base_manifest.target if base_manifest is not None else None)
    if export and target is None:
        raise UsageError("say where the new model goes: --bundle BUNDLE (the bundle devices run now) or --target T, "
                         "or --no-export")
    fb = load_feedback(feedback, run.class_names, run.input_shape, manifest=base_manifest, preprocess=preprocess)
    learn, held_out = split_feedback(fb, s.holdout, s.seed)
    logger.info("feedback %s: %d labelled, %d to learn from, %d held out", feedback, len(fb), len(learn),
                len(held_out) if held_out is not None else 0)
    splits = run.splits()
    replay_set = _replay_set(splits["train"], len(learn), s) if replay else None

    model = keras.models.load_model(run.model_path)
    before = _evaluate_all(model, splits, held_out, learn)
    t_fit = time.perf_counter()
    history = finetune(model, learn, replay_set, s, fisher_data=splits["train"])
    fit_seconds = time.perf_counter() - t_fit
    after = _evaluate_all(model, splits, held_out, learn)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(out_dir) if out_dir is not None else run.path.parent) / (run_name or f"{run.path.name}-retrain-{stamp}")
    _write_run(run, model, run_dir, fit_seconds)
    key, drop_pt, failures = _forgetting(before, after, max_forgetting)
    report: dict[str, Any] = {
        "base_run": str(run.path), "run": str(run_dir), "feedback": str(feedback),
        "settings": {**s.__dict__, "replay": len(replay_set) if replay_set is not None else 0},
        "feedback_counts": _counts(fb, learn, held_out),
        "before": before, "after": after, "forgetting_pt": round(drop_pt, 3), "forgetting_on": key,
        "gain_held_out_pt": None if before["feedback_held_out"] is None
        else round((after["feedback_held_out"] - before["feedback_held_out"]) * 100, 3),
        "history": history, "fit_seconds": round(fit_seconds, 2),
    }
    (run_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")

    bundle_out = None
    if export:
        result = _export(run_dir, target, splits, replay_set if replay_set is not None else splits["train"], learn,
                         base_manifest, version, export_kwargs)
        bundle_out = result.bundle_dir
        failures += [f"export gate: {f}" for f in result.failures]
        report.update({"bundle": str(bundle_out), "bundle_version": result.manifest.version,
                       "export_failures": result.failures})
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

