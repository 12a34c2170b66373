"""``python -m train.tune``: the command line of :mod:`train.analysis.tune`."""
from __future__ import annotations

import argparse
import logging
import sys

from train.analysis import tune
from train.analysis.tune import KEEP, METRICS, PRUNERS, SAMPLERS, Space
from train.errors import ExitCode, UsageError, exit_codes_help
from train.report import LOG_FORMAT, run_report_command

EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.CONFIG, ExitCode.INPUT)


def build_parser() -> argparse.ArgumentParser:
    from train.train import build_parser as train_parser

    p = train_parser()
    p.prog = "python -m train.tune"
    p.description = tune.__doc__
    p.epilog = exit_codes_help(EXIT_CODES)
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    g.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (default, seeded by --seed), random or grid")
    g.add_argument("--space", help="search space file (YAML/JSON); default: seed 001 Table III")
    g.add_argument("--epochs-max", type=int, help="largest epochs value of the default space (default 30)")
    g.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    g.add_argument("--pruner", choices=PRUNERS, default="median", help="stop bad trials early (default median)")
    g.add_argument("--prune-startup", type=int, default=3, help="trials the median pruner waits for (default 3)")
    g.add_argument("--metric", choices=list(METRICS), default="val_accuracy")
    g.add_argument("--study-name", help="Optuna study name (resume it with the same --storage)")
    g.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///tune.db (default: in memory)")
    g.add_argument("--out", help="output directory (default: RUNS_DIR/tune-MODEL-TIME)")
    g.add_argument("--keep", choices=KEEP, default="all", help="trial run directories to keep (default all)")
    g.add_argument("--train-best", action="store_true", help="retrain the best config with full evaluation")
    return p


def _fixed_by_flags(space: Space, args: argparse.Namespace) -> tuple[Space, list[str]]:
    """Drop the parameters a flag fixes (``--lr``, ``--model-kw width=1``); say which."""
    from train.train import parse_model_kwargs

    kw = parse_model_kwargs(args.model_kw)
    fixed = [n for n in space if (kw.get(n.partition(".")[2]) is not None if n.startswith("model_kwargs.")
                                  else getattr(args, n, None) is not None)]
    return {n: s for n, s in space.items() if n not in fixed}, [f"{n}: fixed by a flag, not searched" for n in fixed]


def _tune(args: argparse.Namespace) -> None:
    from train.train import config_from_args

    if args.run_name:
        raise UsageError("--run-name does not apply to train.tune: trials are OUT/trials/trial_NNN (see --out)")
    if args.space and args.epochs_max is not None:
        raise UsageError("--epochs-max shapes the default space; with --space set the epochs range in the file")
    config = config_from_args(args)
    if args.space:
        space, notes = tune.load_space(args.space), []
    else:
        space, notes = tune.default_space(config.model, 30 if args.epochs_max is None else args.epochs_max)
    space, fixed = _fixed_by_flags(space, args)
    result = tune.tune(config, space, trials=args.trials, sampler=args.sampler, pruner=args.pruner,
                       prune_startup=args.prune_startup, metric=args.metric, timeout=args.timeout,
                       study_name=args.study_name, storage=args.storage, out_dir=args.out, keep=args.keep,
                       notes=notes + fixed, train_best=args.train_best)
    print(tune.format_result(result))


def main(argv: list[str] | None = None) -> int:
    import optuna

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format=LOG_FORMAT)
    optuna.logging.set_verbosity(logging.WARNING if args.quiet else logging.INFO)
    logging.getLogger("train.fit").setLevel(logging.WARNING)  # one model summary per trial is noise
    if args.list_models:
        from train.models import list_models, model_info

        for name in list_models():
            print(f"{name:<14} {model_info(name).get('description', '')}")
        return ExitCode.OK
    return run_report_command(lambda: _tune(args))


if __name__ == "__main__":
    sys.exit(main())
