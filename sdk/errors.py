"""Errors a device run can end with; each class carries the CLI exit code for it.

The two tiers of failure (paho-mqtt style): bad input raises one of these (a ``ValueError``
or ``RuntimeError`` subclass as fits); network weather (a broker gone, a stream dropped) is
logged, counted and retried, never raised.
"""
from __future__ import annotations

from .bundle import BundleError


class EdgeError(Exception):
    """Base class; ``exit_code`` is what ``edge-classify`` exits with."""

    exit_code = 1


class ConfigError(EdgeError, ValueError):
    """Malformed YAML, an unknown key, a value out of range."""

    exit_code = 3


class SourceOpenError(EdgeError, RuntimeError):
    """A camera index or stream URL that does not open."""

    exit_code = 4


class SourceReadError(EdgeError, ValueError):
    """A video file or image folder that is missing or cannot be decoded."""

    exit_code = 5


class ManifestError(EdgeError, BundleError):
    """A bundle directory without a (valid) manifest.json."""

    exit_code = 6


class ModelError(EdgeError, BundleError):
    """A model file that is missing, corrupt, or does not match its manifest."""

    exit_code = 7


class RuntimeUnavailableError(EdgeError, RuntimeError):
    """No interpreter package, or a delegate library (libedgetpu) that cannot be loaded."""

    exit_code = 8


class MqttConfigError(EdgeError, ValueError):
    """Broker address, TLS files or credentials that cannot work."""

    exit_code = 9


class BrokerCertificateError(MqttConfigError):
    """The broker's TLS certificate does not verify: not signed by a trusted CA, expired, self-signed."""

    exit_code = 10


class BrokerHostnameError(MqttConfigError):
    """The broker's TLS certificate is valid but issued for another host name (or IP address)."""

    exit_code = 11


EXIT_CODES = {
    0: "success (also after SIGTERM/SIGINT: queue flushed, status offline published)",
    1: "unexpected error (a bug: please report it with the log)",
    2: "bad command line (unknown flag, missing argument)",
    ConfigError.exit_code: "configuration error: malformed YAML, unknown key, invalid value",
    SourceOpenError.exit_code: "frame source does not open: camera index, RTSP URL",
    SourceReadError.exit_code: "video file or image folder missing or unreadable",
    ManifestError.exit_code: "model bundle without a valid manifest.json",
    ModelError.exit_code: "model file missing, corrupt, or not matching its manifest (sha256, shapes, dtypes)",
    RuntimeUnavailableError.exit_code: "no TFLite interpreter installed, or delegate library (libedgetpu) missing",
    MqttConfigError.exit_code: "MQTT settings unusable: broker address, TLS files, credentials",
    BrokerCertificateError.exit_code: "the broker's TLS certificate is not trusted (unknown CA, expired, self-signed)",
    BrokerHostnameError.exit_code: "the broker's TLS certificate is for another host name than the one connected to",
}
