"""``python -m train.train``: train a registered model on a dataset and write a run directory.

    python -m train.train --model lenet5 --data path/to/train.csv
    python -m train.train --model resnet_small --data ../shared/data/fashion-mnist --augment
    python -m train.train --config my_run.yaml --epochs 5      # flags override the file
    python -m train.train --noise-std 50                       # noise-injection defence
    python -m train.train --adversarial fgsm --adv-epsilon 16  # adversarial training (pixel units)
    python -m train.train --model fast_cnn --data feedback/ --image-size 64 64   # a first model from a studio store

``--data`` a feedback store (``train.collect`` / ``train.studio``): its labelled samples are exported
as a dataset version, ``<store>/snapshots/<time>/`` (the model input when the device sent one, else
the frame's region crop, classes in the store's label order), and the run trains on that folder, so
the run's config names data that does not change as labelling goes on.

The library twin is :func:`train.fit.run_training` (``run_training(TrainConfig(model="lenet5", data=...))``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pydantic import ValidationError

from train.config import AdversarialConfig, AugmentConfig, TrainConfig
from train.errors import ExitCode, InputError, UsageError, exit_codes_help, run_command
from train.fit import run_training

logger = logging.getLogger(__name__)


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``--model-kw KEY=VALUE`` items as a dict (VALUE parsed as JSON where it is JSON)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--model-kw expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.train", description=__doc__, epilog=exit_codes_help(EXIT_CODES),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--cutout", type=float, metavar="FRACTION",
                   help="cutout: blank a random square of this fraction of the image side (0..1; 0.5 on CIFAR-10)")
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
        fields["model_kwargs"] = parse_model_kwargs(args.model_kw)
    if args.quiet:
        fields["verbose"] = 0
    if args.config:
        config = TrainConfig.from_file(args.config, **fields)
    else:
        try:
            config = TrainConfig(**fields)
        except ValidationError as e:
            problems = "; ".join(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}" for err in e.errors())
            raise UsageError(f"invalid option: {problems}") from e
    if args.augment:
        config.augment.enabled = True
    for flag, field, valid in (("--noise-std", "noise_std", "within 0..128 pixels"),
                               ("--elastic", "elastic", "within 0..100 pixels"),
                               ("--elastic-sigma", "elastic_sigma", "above 0 and at most 32 pixels"),
                               ("--cutout", "cutout", "within 0..1 (a fraction of the image side)")):
        value = getattr(args, field)
        if value is None:
            continue
        try:
            config.augment = AugmentConfig.model_validate({**config.augment.model_dump(), field: value})
        except ValidationError as e:
            raise UsageError(f"{flag} must be {valid}; got {value}") from e
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
        raise UsageError("--adv-epsilon/--adv-ratio/--adv-pgd-steps need --adversarial fgsm|pgd")
    if "epsilon" not in raw:
        raise UsageError("--adversarial needs --adv-epsilon (L-inf size in pixels, 0 < eps <= 255)")
    try:
        adversarial = AdversarialConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{_ADV_FLAGS.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}" for err in e.errors())
        raise UsageError(f"invalid adversarial training option: {problems}") from e
    return config.model_copy(update={"adversarial": adversarial})


EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.INPUT)


def snapshot_feedback(config: TrainConfig) -> TrainConfig:
    """``config`` as is, or, when ``config.data`` is a feedback store, with ``data`` set to a new
    snapshot of its labelled samples (see the module doc). InputError naming the classes that have
    too few labels, with the counts."""
    import time
    from pathlib import Path

    store_dir = Path(config.data)
    if not (store_dir.is_dir() and (store_dir / "index.sqlite").is_file()):
        return config
    from train.loop.export import MIN_PER_CLASS, too_few_labels
    from train.loop.samples import FeedbackError
    from train.loop.store import FeedbackStore

    with FeedbackStore(store_dir) as store:
        labels, counts = store.labels(), store.counts()["labels"]
        if not labels:
            raise InputError(f"--data {store_dir}: a feedback store with no classes yet; define them in the studio "
                             "(or train.label --labels) and label some samples first")
        short = too_few_labels(labels, counts)
        if short:
            raise InputError(f"--data {store_dir}: every class needs at least {MIN_PER_CLASS} labelled samples; "
                             f"too few: {', '.join(short)} (labelled: "
                             f"{', '.join(f'{c} {n}' for c, n in counts.items()) or 'none'})")
        out = store_dir / "snapshots" / time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while out.exists():
            n += 1
            out = out.with_name(f"{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        try:
            exported = store.export_folder(out)
        except FeedbackError as e:
            raise InputError(f"--data {store_dir}: {e}") from e
    short = too_few_labels(labels, exported)
    if short:  # samples whose region does not fit their frame are left out of an export
        raise InputError(f"--data {store_dir}: after leaving out the samples that could not be exported, too few "
                         f"remain for: {', '.join(short)} (snapshot {out})")
    logger.info("%s: %d labelled samples (%s) exported to %s", store_dir, sum(exported.values()),
                ", ".join(f"{c} {exported.get(c, 0)}" for c in labels), out)
    return config.model_copy(update={"data": str(out)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.list_models:
        from train.models import list_models, model_info

        for name in list_models():
            print(f"{name:<14} {model_info(name).get('description', '')}")
        return ExitCode.OK
    return run_command(lambda: run_training(snapshot_feedback(config_from_args(args))) and None)


if __name__ == "__main__":
    sys.exit(main())
