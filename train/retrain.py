"""Fine-tune a trained run on labelled feedback without forgetting what it knew, then export.

    python -m train.retrain --base runs/lenet5-mnist --feedback feedback/ --bundle bundles/rpi
    python -m train.retrain --base runs/X --feedback feedback/ --target coral --ewc 200
    python -m train.retrain --base runs/X --feedback extra_digits/ --no-replay --no-export

``--feedback`` is a store written by ``train.collect`` and labelled with ``train.label`` (only
labelled samples are used; each sample's ``model_input``, what the device's preprocessing fed
the model, is the training image, else its frame goes through the preprocessing of ``--bundle``'s
manifest and ``--device-config``'s ``preprocess`` section) or any dataset ``train.data.load_dataset`` reads.

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
the version is the new run's) or ``--target``. Forgetting above ``--max-forgetting`` or an
exported artefact below the export accuracy gate exits 13, with everything still written.
The library is :mod:`train.loop.retrain`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from train.errors import ExitCode, InputError, exit_codes_help, run_command
from train.loop.retrain import RetrainSettings, format_report, retrain

EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.INPUT, ExitCode.BUNDLE,
              ExitCode.MODEL, ExitCode.GATE, ExitCode.ARTEFACT)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.retrain", description=__doc__, epilog=exit_codes_help(EXIT_CODES),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the training run the devices' model came from")
    p.add_argument("--feedback", required=True, help="a train.collect store, or any dataset train.data reads")
    p.add_argument("--bundle", help="the bundle the devices run now: its preprocessing, target and name are reused")
    p.add_argument("--device-config", metavar="YAML",
                   help="the devices' edge-classify config: its preprocess section (mode, roi, resize, regions, invert) applies to frames")
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
                   help="largest accepted drop of the base test accuracy, in percentage points (exit 13 above it)")
    return p


def _problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags (each a line for ``parser.error``)."""
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
    return problems


def _run(args: argparse.Namespace) -> int:
    from sdk.config import load_config
    from train.data import DataError

    settings = RetrainSettings(holdout=args.holdout, replay=args.replay, feedback_share=args.feedback_share,
                               epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, ewc=args.ewc,
                               seed=args.seed)
    preprocess = load_config(args.device_config).preprocess if args.device_config else None  # ConfigError: 3
    try:
        res = retrain(args.base, args.feedback, settings=settings, replay=not args.no_replay, out_dir=args.out,
                      run_name=args.name, bundle=args.bundle, target=args.target, export=not args.no_export,
                      version=args.version, max_forgetting=args.max_forgetting, preprocess=preprocess)
    except DataError as e:  # unusable feedback: exit 5, also where train.data's error carries no exit code
        if isinstance(getattr(e, "exit_code", None), int):
            raise
        raise InputError(str(e)) from e
    print(format_report(res.report))
    return ExitCode.GATE if res.failures else ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = _problems(args)
    if problems:
        parser.error("; ".join(problems))
    return run_command(lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
