"""The project's one table of exit codes, and the errors a device run can end with.

Every command (``edge-classify``, ``python -m train.*``) exits with a number from :class:`ExitCode`;
the same number means the same thing in every tool, and each ``--help`` lists the ones it uses
(:func:`exit_codes_help`). An error class carries its code as ``exit_code``.

The two tiers of failure (paho-mqtt style): bad input raises one of these (a ``ValueError``
or ``RuntimeError`` subclass as fits); network weather (a broker gone, a stream dropped) is
logged, counted and retried, never raised. A ``ValueError`` from a library that is not one of
ours is a bug (exit 1, with its traceback), never reported as bad input.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Iterable

from .bundle import BundleError


class ExitCode(IntEnum):
    """Exit codes of every command in the project (device and host alike)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    SOURCE_OPEN = 4
    INPUT = 5
    BUNDLE = 6
    MODEL = 7
    RUNTIME = 8
    MQTT_CONFIG = 9
    BROKER_CERTIFICATE = 10
    BROKER_HOSTNAME = 11
    BROKER_UNREACHABLE = 12
    GATE = 13
    ARTEFACT = 14
    DEVICE_REFUSED = 15
    INCOMPLETE = 16


EXIT_CODES: dict[int, str] = {
    ExitCode.OK: "success (edge-classify: also after SIGTERM/SIGINT, queue flushed and status offline published)",
    ExitCode.INTERNAL: "unexpected error (a bug: please report it with the traceback)",
    ExitCode.USAGE: "bad command line: unknown flag, missing argument, a flag value out of range",
    ExitCode.CONFIG: "configuration error: malformed YAML/JSON config, unknown key, invalid value",
    ExitCode.SOURCE_OPEN: "frame source does not open: camera index, RTSP URL",
    ExitCode.INPUT: "input missing or unusable: video, image folder, dataset, calibration set, sample store",
    ExitCode.BUNDLE: "run directory or model bundle missing or incomplete (no valid run.json / manifest.json)",
    ExitCode.MODEL: "model file missing, corrupt, or not matching its manifest (sha256, shapes, dtypes)",
    ExitCode.RUNTIME: "no TFLite interpreter installed, or delegate library (libedgetpu) missing",
    ExitCode.MQTT_CONFIG: "MQTT settings unusable: broker address, TLS files, credentials",
    ExitCode.BROKER_CERTIFICATE: "the broker's TLS certificate is not trusted (unknown CA, expired, self-signed)",
    ExitCode.BROKER_HOSTNAME: "the broker's TLS certificate is for another host name than the one connected to",
    ExitCode.BROKER_UNREACHABLE: "the MQTT broker could not be reached or refused the connection",
    ExitCode.GATE: "a quality gate failed: accuracy below the threshold asked for (the output is still written)",
    ExitCode.ARTEFACT: "an export target could not build an artefact it promises (ONNX, the Edge TPU compiler)",
    ExitCode.DEVICE_REFUSED: "a device refused the model update or did not confirm it in time",
    ExitCode.INCOMPLETE: "a bounded run ended before its goal (collect: --timeout came before --max-messages)",
}


def exit_codes_help(codes: Iterable[int] | None = None) -> str:
    """The ``Exit codes:`` block of a command's ``--help`` (all codes, or just ``codes``)."""
    wanted = sorted(set(codes)) if codes is not None else sorted(EXIT_CODES)
    return "exit codes:\n" + "\n".join(f"  {int(c):>3}  {EXIT_CODES[c]}" for c in wanted)


class EdgeError(Exception):
    """Base class; ``exit_code`` is what ``edge-classify`` exits with."""

    exit_code: int = ExitCode.INTERNAL


class ConfigError(EdgeError, ValueError):
    """Malformed YAML, an unknown key, a value out of range."""

    exit_code: int = ExitCode.CONFIG


class SourceOpenError(EdgeError, RuntimeError):
    """A camera index or stream URL that does not open."""

    exit_code: int = ExitCode.SOURCE_OPEN


class SourceReadError(EdgeError, ValueError):
    """A video file or image folder that is missing or cannot be decoded."""

    exit_code: int = ExitCode.INPUT


class ManifestError(EdgeError, BundleError):
    """A bundle directory without a (valid) manifest.json."""

    exit_code: int = ExitCode.BUNDLE


class ModelError(EdgeError, BundleError):
    """A model file that is missing, corrupt, or does not match its manifest."""

    exit_code: int = ExitCode.MODEL


class RuntimeUnavailableError(EdgeError, RuntimeError):
    """No interpreter package, or a delegate library (libedgetpu) that cannot be loaded."""

    exit_code: int = ExitCode.RUNTIME


class MqttConfigError(EdgeError, ValueError):
    """Broker address, TLS files or credentials that cannot work."""

    exit_code: int = ExitCode.MQTT_CONFIG


class BrokerCertificateError(MqttConfigError):
    """The broker's TLS certificate does not verify: not signed by a trusted CA, expired, self-signed."""

    exit_code: int = ExitCode.BROKER_CERTIFICATE


class BrokerHostnameError(MqttConfigError):
    """The broker's TLS certificate is valid but issued for another host name (or IP address)."""

    exit_code: int = ExitCode.BROKER_HOSTNAME

