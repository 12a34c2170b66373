"""Errors the host commands (``python -m train.*``) end with, on the project's one exit-code table.

Each class carries its :class:`sdk.errors.ExitCode` as ``exit_code``; :func:`run_command` turns one
into ``error: <message>`` on stderr and that exit code. Anything else that escapes (a ``ValueError``
raised inside NumPy or TensorFlow included) is a bug: its traceback is shown and the exit code is 1.
"""
from __future__ import annotations

import sys
from typing import Callable

from sdk.errors import ExitCode, exit_codes_help

__all__ = [
    "ArtefactError", "BrokerUnreachableError", "CommandError", "ConfigFileError", "DeviceRefusedError", "ExitCode",
    "GateError", "IncompleteError", "InputError", "UsageError", "exit_codes_help", "run_command",
]


class CommandError(Exception):
    """Base class of the host commands' errors; ``exit_code`` is what the command exits with."""

    exit_code: int = ExitCode.INTERNAL


class UsageError(CommandError, ValueError):
    """A flag value that cannot work: out of range, unknown name, a combination that makes no sense."""

    exit_code = ExitCode.USAGE


class ConfigFileError(CommandError, ValueError):
    """A config file (YAML/JSON) that is malformed, has an unknown key or an invalid value."""

    exit_code = ExitCode.CONFIG


class InputError(CommandError, ValueError):
    """Input data missing or unusable: a dataset, a calibration set, a sample store."""

    exit_code = ExitCode.INPUT


class GateError(CommandError, RuntimeError):
    """A quality gate failed (the output is still written, with the figures)."""

    exit_code = ExitCode.GATE


class ArtefactError(CommandError, RuntimeError):
    """An export target could not build an artefact it promises."""

    exit_code = ExitCode.ARTEFACT


class BrokerUnreachableError(CommandError, RuntimeError):
    """The MQTT broker could not be reached or refused the connection."""

    exit_code = ExitCode.BROKER_UNREACHABLE


class IncompleteError(CommandError, RuntimeError):
    """A bounded run ended before its goal (collect's ``--timeout`` before ``--max-messages``)."""

    exit_code = ExitCode.INCOMPLETE


class DeviceRefusedError(CommandError, RuntimeError):
    """A device refused the model update, or did not confirm it in time."""

    exit_code = ExitCode.DEVICE_REFUSED


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body; map an error that carries an ``exit_code`` to its message and code.

    Errors without an ``exit_code`` propagate (Python prints the traceback and exits 1).
    """
    try:
        code = body()
    except Exception as e:
        exit_code = getattr(e, "exit_code", None)
        if not isinstance(exit_code, int):
            raise
        print(f"error: {e}", file=sys.stderr)
        return int(exit_code)
    return int(code or ExitCode.OK)
