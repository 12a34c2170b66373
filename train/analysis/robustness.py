"""Robustness of a run: accuracy under corruptions and adversarial attacks, float and TFLite.

    python -m train.robustness --run runs/X                            # float model, 1000 test images
    python -m train.robustness --run runs/X --bundle runs/X/bundles/rpi   # and the INT8 bundle
    python -m train.robustness --run runs/X --corruptions blur rotation --attacks pgd --epsilons 0 8 16

Corruptions (severity 1..5; images stay uint8, as a camera would give them):

    gaussian_noise  noise sigma, pixels               20  40  60  80  100
    blur            Gaussian blur sigma, pixels      0.5 1.0 1.5 2.0 2.5
    brightness      added to every pixel             +30 +60 +90 +120 +150
    contrast        factor about the image mean      0.7 0.5 0.35 0.2 0.1
    rotation        degrees, random direction         10  20  30  45  60
    occlusion       grey square, side / image side  0.15 0.25 0.35 0.45 0.55  (random place)

Attacks (L-inf, ``--epsilons`` in pixel units 0..255, since our models take raw pixels), made on
the float model with ``tf.GradientTape`` (see ``train.analysis.adversarial``): ``fgsm``, ``pgd`` (random
start, ``--pgd-steps`` steps of 2.5 * eps / steps) and ``random`` (a random +-eps sign pattern:
the control showing how much of a drop is the attack and not the perturbation size). The
bundle's model gets the same images (transferred attacks), quantized as its manifest says and
run by the LiteRT interpreter of the device SDK.

Writes ``analysis/robustness.json`` (and its images) in the run and renders its ``report.html``
again, with a "Robustness" section holding the curves; prints a table. The library calls are
:func:`evaluate_robustness` (same argument names) and :func:`robustness_report`; the command line is
train/robustness.py.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sdk.errors import ManifestError
from train.errors import UsageError
from train.report import Table, add_analysis, image_grid, png, pyplot, show_image

logger = logging.getLogger(__name__)

ANALYSIS_NAME = "robustness"
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_EPSILONS = (0.0, 2.0, 4.0, 8.0, 16.0)
ATTACKS = ("fgsm", "pgd", "random")
DEFAULT_SAMPLES = 1000
DEFAULT_PGD_STEPS = 10


# --------------------------------------------------------------------------- corruptions


def _gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, x.shape)


def _blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")


def _brightness(x: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    return x + shift


def _contrast(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * factor + mean


def _rotation(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import rotate

    border = np.concatenate([x[:, 0].ravel(), x[:, -1].ravel(), x[:, :, 0].ravel(), x[:, :, -1].ravel()])
    fill = float(np.median(border))  # the background, so the corners do not add edges
    signs = rng.choice([-1.0, 1.0], size=len(x))
    return np.stack([rotate(img, s * degrees, axes=(0, 1), reshape=False, order=1, mode="constant", cval=fill)
                     for img, s in zip(x, signs)])


def _occlusion(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    n, h, w, _ = x.shape
    side = max(1, round(fraction * min(h, w)))
    top, left = rng.integers(0, h - side + 1, n), rng.integers(0, w - side + 1, n)
    out = x.copy()
    for img, y0, x0 in zip(out, top, left):
        img[y0 : y0 + side, x0 : x0 + side] = 127.5
    return out


@dataclass(frozen=True)
class Corruption:
    """A corruption: what its severity sets (``parameter``), the value at severities 1..5 and
    the function ``apply(float images, value, rng) -> float images``."""

    name: str
    parameter: str
    levels: tuple[float, ...]
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

    def __call__(self, x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        """``x`` (uint8) corrupted at ``severity``, rounded and clipped back to uint8."""
        out = self.apply(x.astype(np.float32), self.levels[severity - 1], rng)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", "noise sigma (pixels)", (20, 40, 60, 80, 100), _gaussian_noise),
        Corruption("blur", "blur sigma (pixels)", (0.5, 1.0, 1.5, 2.0, 2.5), _blur),
        Corruption("brightness", "brightness shift (pixels)", (30, 60, 90, 120, 150), _brightness),
        Corruption("contrast", "contrast factor", (0.7, 0.5, 0.35, 0.2, 0.1), _contrast),
        Corruption("rotation", "rotation (degrees)", (10, 20, 30, 45, 60), _rotation),
        Corruption("occlusion", "occluder side / image side", (0.15, 0.25, 0.35, 0.45, 0.55), _occlusion),
    )
}


# --------------------------------------------------------------------------- checking arguments


def _unknown(flag: str, name: str, valid: Sequence[str]) -> UsageError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"{flag}: unknown name {name!r}{hint}; valid: {', '.join(valid)}")


def check_arguments(corruptions: Sequence[str], severities: Sequence[int], attacks: Sequence[str],
                    epsilons: Sequence[float], pgd_steps: int, samples: int) -> None:
    """:class:`~train.errors.UsageError` (a ``ValueError``) naming the flag for any bad argument."""
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise _unknown("--corruptions", name, list(CORRUPTIONS))
    for name in attacks:
        if name not in ATTACKS:
            raise _unknown("--attacks", name, ATTACKS)
    for s in severities:
        if s not in SEVERITIES:
            raise UsageError(f"--severities: {s} is not a severity; valid: {', '.join(map(str, SEVERITIES))}")
    for e in epsilons:
        if not 0 <= e <= 255:
            raise UsageError(f"--epsilons: {e:g} is out of range; epsilons are L-inf sizes in pixel units and must be "
                             "within 0..255 (the models take raw 0..255 pixels)")
    if pgd_steps < 1:
        raise UsageError(f"--pgd-steps must be >= 1; got {pgd_steps}")
    if samples < 1:
        raise UsageError(f"--samples must be >= 1; got {samples}")


# --------------------------------------------------------------------------- predicting


def _float_predict(model, batch_size: int = 1024) -> Callable[[np.ndarray], np.ndarray]:
    from train._tf import tf

    fn = tf.function(lambda xb: tf.argmax(model(xb, training=False), axis=1), reduce_retracing=True)

    def predict(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return np.concatenate([fn(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)])

    return predict


def _tflite_label(manifest) -> str:
    kind = "INT8" if manifest.input.quantization is not None else manifest.input.dtype
    return f"{kind} TFLite ({manifest.target})"


def _load_bundle(path: str | Path):
    """The bundle, for the LiteRT interpreter on the CPU; the SDK's errors (they name the file) pass through."""
    from sdk.runtime import load_bundle

    p = Path(path)
    if not p.exists():
        raise ManifestError(f"--bundle {p}: not found; export one with python -m train.export --target rpi --run RUN")
    return load_bundle(p, delegate="none")


# --------------------------------------------------------------------------- attacks


def make_attack(model, attack: str, *, pgd_steps: int = DEFAULT_PGD_STEPS, seed: int = 0,
                batch_size: int = 500) -> Callable[[np.ndarray, np.ndarray, float], np.ndarray]:
    """``attack(x, y, epsilon)``: float32 images (0..255) perturbed by ``attack`` of L-inf size
    ``epsilon`` pixels against ``model`` (traced once, reused for every epsilon)."""
    if attack not in ATTACKS:
        raise _unknown("--attacks", attack, ATTACKS)
    if attack == "random":
        rng = np.random.default_rng(seed)

        def random_signs(x: np.ndarray, y: np.ndarray, epsilon: float) -> np.ndarray:
            signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=x.shape)
            return np.clip(x.astype(np.float32) + epsilon * signs, 0.0, 255.0)

        return random_signs
    from train._tf import tf
    from train.analysis.adversarial import attack_target, fgsm, pgd

    net, from_logits = attack_target(model)
    generator = tf.random.Generator.from_seed(seed)
    spec = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32), tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([], tf.float32)]
    if attack == "fgsm":
        fn = tf.function(lambda xb, yb, eps: fgsm(net, xb, yb, eps, from_logits=from_logits), input_signature=spec)
    else:
        fn = tf.function(lambda xb, yb, eps: pgd(net, xb, yb, eps, steps=pgd_steps, from_logits=from_logits, rng=generator),
                         input_signature=spec)

    def run(x: np.ndarray, y: np.ndarray, epsilon: float) -> np.ndarray:
        x, y = x.astype(np.float32), y.astype(np.int64)
        return np.concatenate([fn(x[i : i + batch_size], y[i : i + batch_size], np.float32(epsilon)).numpy()
                               for i in range(0, len(x), batch_size)])

    return run


# --------------------------------------------------------------------------- the evaluation


def evaluate_robustness(
    run,
    bundle: str | Path | None = None,
    *,
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    attacks: Sequence[str] = ATTACKS,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    pgd_steps: int = DEFAULT_PGD_STEPS,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    runs_dir: str | Path = "runs",
) -> dict[str, Any]:
    """Accuracy of ``run``'s float model (and of ``bundle``'s TFLite model) on ``samples`` test
    images drawn stratified by class, clean, corrupted and attacked. Deterministic in ``seed``.

    ``run``: a run directory (None: the latest under ``runs_dir``) or a loaded ``train.runs.Run``.
    Returns the data behind the report: ``clean``, ``corruptions[name]`` and ``attacks[name]``, each
    with a list of accuracies per model key (``float`` and, with a bundle, ``tflite``).
    Raises :class:`~train.errors.UsageError` naming the flag for bad arguments, ``RunError`` for a
    missing run, ``sdk.errors.ManifestError`` for a missing bundle.
    """
    from train.data import stratified_sample
    from train.runs import Run, load_run

    severities, epsilons = sorted(set(severities)), sorted(set(float(e) for e in epsilons))
    check_arguments(corruptions, severities, attacks, epsilons, pgd_steps, samples)
    run = run if isinstance(run, Run) else load_run(run, runs_dir)
    loaded = _load_bundle(bundle) if bundle is not None else None

    splits = run.splits()
    split = "test" if splits.get("test") is not None else "val"
    ds = splits[split]
    if samples < len(ds):
        ds = stratified_sample(ds, samples, seed=seed)
    x, y = ds.x, ds.y
    predictors = {"float": _float_predict(run.model)}
    if loaded is not None:
        from sdk.batch import predict_batch

        norm = loaded.manifest.input.normalization
        predictors["tflite"] = lambda images: predict_batch(loaded.interpreter, images, normalization=norm).argmax(axis=1)

    def accuracy(images: np.ndarray) -> dict[str, float]:
        return {k: float((p(images) == y).mean()) for k, p in predictors.items()}

    data: dict[str, Any] = {
        "run": str(run.path), "bundle": str(loaded.path) if loaded else None, "split": split, "samples": len(y),
        "seed": seed, "models": {"float": "Keras float32"} | ({"tflite": _tflite_label(loaded.manifest)} if loaded else {}),
        "clean": accuracy(x), "corruptions": {}, "attacks": {},
    }
    for ci, name in enumerate(corruptions):
        c = CORRUPTIONS[name]
        entry: dict[str, Any] = {"parameter": c.parameter, "severities": severities,
                                 "values": [c.levels[s - 1] for s in severities], **{k: [] for k in predictors}}
        for s in severities:
            acc = accuracy(c(x, s, np.random.default_rng([seed, ci, s])))
            for k, v in acc.items():
                entry[k].append(v)
        data["corruptions"][name] = entry
        logger.info("%s: %s", name, {k: entry[k] for k in predictors})
    for name in attacks:
        entry = {"epsilons": epsilons, **{k: [] for k in predictors}}
        if name == "pgd":
            entry |= {"steps": pgd_steps, "step_size": "2.5 * eps / steps", "random_start": True}
        attack = make_attack(run.model, name, pgd_steps=pgd_steps, seed=seed)
        for e in epsilons:
            acc = accuracy(attack(x, y, e))
            for k, v in acc.items():
                entry[k].append(v)
        data["attacks"][name] = entry
        logger.info("%s: %s", name, {k: entry[k] for k in predictors})
    return data


# --------------------------------------------------------------------------- report


def table_rows(data: dict) -> list[dict[str, Any]]:
    """One row per condition: clean, each corruption severity, each attack epsilon."""
    keys = list(data["models"])
    rows = [{"condition": "clean", "setting": "", **{k: data["clean"][k] for k in keys}}]
    for name, c in data["corruptions"].items():
        for i, s in enumerate(c["severities"]):
            rows.append({"condition": f"{name} s{s}", "setting": f"{c['parameter']} {c['values'][i]:g}",
                         **{k: c[k][i] for k in keys}})
    for name, a in data["attacks"].items():
        for i, e in enumerate(a["epsilons"]):
            rows.append({"condition": name, "setting": f"eps {e:g} px", **{k: a[k][i] for k in keys}})
    return rows


def format_table(data: dict) -> str:
    keys = list(data["models"])
    head = f"{'condition':<20} {'setting':<34}" + "".join(f" {data['models'][k]:>22}" for k in keys)
    lines = [f"robustness of {data['run']} on {data['samples']} {data['split']} images (seed {data['seed']})", head]
    for r in table_rows(data):
        lines.append(f"{r['condition']:<20} {r['setting']:<34}" + "".join(f" {r[k]:>22.4f}" for k in keys))
    return "\n".join(lines)


_STYLES = {"float": dict(marker="o", linestyle="-"), "tflite": dict(marker="s", linestyle="--")}


def _plot_curves(data: dict, kind: str) -> bytes | None:
    groups = data[kind]
    if not groups:
        return None
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel()[len(groups):]:
        ax.axis("off")
    for ax, (name, g) in zip(axes.ravel(), groups.items()):
        for key, label in data["models"].items():
            if kind == "corruptions":  # severity 0 is the clean accuracy
                xs, ys = [0, *g["severities"]], [data["clean"][key], *g[key]]
            else:
                xs, ys = g["epsilons"], g[key]
            ax.plot(xs, ys, label=label, **_STYLES[key])
        if kind == "corruptions":
            ax.set_xlabel(f"severity (0 = clean)\n{g['parameter']}: " + ", ".join(f"{v:g}" for v in g["values"]))
        else:
            ax.set_xlabel("epsilon (L-inf, pixels 0..255)")
        ax.set_title(name)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def _plot_examples(run, data: dict, image: np.ndarray, label: int) -> bytes:
    """One test image under every corruption severity and attack epsilon."""
    rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    for ci, (name, c) in enumerate(data["corruptions"].items()):
        rows.append((name, [(f"s{s}", CORRUPTIONS[name](image[None], s, np.random.default_rng([data["seed"], ci, s]))[0])
                            for s in c["severities"]]))
    for name, a in data["attacks"].items():
        attack = make_attack(run.model, name, pgd_steps=a.get("steps", DEFAULT_PGD_STEPS), seed=data["seed"])
        rows.append((name, [(f"eps {e:g}", attack(image[None], np.array([label]), e)[0]) for e in a["epsilons"]]))
    fig, axes = image_grid(len(rows), max(len(r[1]) for r in rows), (1.3, 1.45))
    for (name, cells), axrow in zip(rows, axes):
        for j, (title, img) in enumerate(cells):
            show_image(axrow[j], np.clip(img, 0, 255).astype(np.uint8), f"{name} {title}" if j == 0 else title, vmin=0, vmax=255)
    return png(fig)


def results_table(data: dict) -> Table:
    """The report's table: :func:`table_rows` with the models' labels as column names."""
    header = {"condition": "condition", "setting": "setting", **data["models"]}
    rows = [{header[k]: v for k, v in r.items()} for r in table_rows(data)]
    return Table(rows, list(header.values()), {label: ".4f" for label in data["models"].values()})


def robustness_report(run=None, bundle: str | Path | None = None, *, runs_dir: str | Path = "runs",
                      **options) -> tuple[dict, Path]:
    """:func:`evaluate_robustness` (``options`` are its keyword arguments), then stored as the run's
    "robustness" analysis with its curves and one test image under each condition (template
    ``analysis/robustness.html``); returns the data and the path of ``analysis/robustness.json``."""
    from train.runs import Run, load_run

    run = run if isinstance(run, Run) else load_run(run, runs_dir)
    data = evaluate_robustness(run, bundle, **options)
    ds = run.splits()[data["split"]]
    images = {"corruptions": _plot_curves(data, "corruptions"), "attacks": _plot_curves(data, "attacks"),
              "examples": _plot_examples(run, data, ds.x[0], int(ds.y[0]))}
    return data, add_analysis(run.path, ANALYSIS_NAME, "Robustness", data, tables={"results": results_table(data)},
                              images=images)
