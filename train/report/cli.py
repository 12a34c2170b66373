"""What the commands of the report and of the analyses share: how their errors map to exit codes.

``python -m train.evaluate``, ``train.robustness``, ``train.explain``, ``train.fairness``,
``train.crossval`` and ``train.tune`` run their body with :func:`run_report_command`: an error that
carries an ``exit_code`` (:mod:`train.errors`, :mod:`sdk.errors`) ends the command with its message
and code, and so do a missing run (:class:`train.runs.RunError`, 6) and unusable data
(:class:`train.data.DataError`, 5) where their classes carry no code of their own. Anything else (a
``ValueError`` from NumPy or TensorFlow included) is a bug: its traceback is shown, exit code 1.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Iterable

from train.errors import ExitCode, exit_codes_help, run_command

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: The codes every one of these commands can end with.
EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.INPUT, ExitCode.BUNDLE)


def run_parser(prog: str, description: str | None, exit_codes: Iterable[int]) -> argparse.ArgumentParser:
    """The parser of a command on one run: ``--run`` and ``--runs-dir``, the exit codes in its epilog."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=exit_codes_help(exit_codes),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run directory (default: the latest under --runs-dir)")
    p.add_argument("--runs-dir", default="runs")
    return p


def run_report_command(body: Callable[[], int | None], *, log_level: int | None = None) -> int:
    """:func:`train.errors.run_command`, with run and data errors on their codes even without ``exit_code``.
    With ``log_level``, log to stderr at that level first (only a command sets up logging)."""
    from train.data import DataError
    from train.runs import RunError

    if log_level is not None:
        logging.basicConfig(level=log_level, format=LOG_FORMAT)
    try:
        return run_command(body)
    except (RunError, DataError) as e:  # only reached when the class carries no int exit_code
        print(f"error: {e}", file=sys.stderr)
        return int(ExitCode.BUNDLE if isinstance(e, RunError) else ExitCode.INPUT)
