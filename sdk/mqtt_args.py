"""The broker connection flags, spelled the same in every command: ``edge-classify``,
``train.collect``, ``train.publish`` (and the names match the device config's ``mqtt.tls`` keys).

    --tls  --ca-certs PEM  --certfile PEM  --keyfile PEM  --tls-insecure
    --username-env VAR  --password-env VAR
"""
from __future__ import annotations

import argparse

from .mqtt import DEFAULT_PASSWORD_ENV, DEFAULT_USERNAME_ENV, TlsSettings


def add_tls_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--tls``, ``--ca-certs``, ``--certfile``, ``--keyfile``, ``--tls-insecure``."""
    parser.add_argument("--tls", action="store_true", default=None,
                        help="connect with TLS (implied by the other TLS options)")
    parser.add_argument("--ca-certs", metavar="PEM",
                        help="CA certificate that signed the broker's (default: the system's CAs)")
    parser.add_argument("--certfile", metavar="PEM", help="client certificate, for mutual TLS (with --keyfile)")
    parser.add_argument("--keyfile", metavar="PEM", help="client private key, for mutual TLS (with --certfile)")
    parser.add_argument("--tls-insecure", action="store_true", default=None,
                        help="do not check the broker's host name against its certificate (lab only)")


def add_credential_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, defaults: bool = True) -> None:
    """``--username-env`` / ``--password-env``: the names of the environment variables that hold
    the MQTT user name and password (never the secrets themselves on a command line). Without
    ``defaults`` they stay None unless given (``edge-classify``: the config file decides)."""
    where = "" if defaults else "the config's mqtt.{}, else "
    parser.add_argument("--username-env", metavar="VAR", default=DEFAULT_USERNAME_ENV if defaults else None,
                        help="environment variable holding the MQTT user name (default: "
                             f"{where.format('username_env')}{DEFAULT_USERNAME_ENV})")
    parser.add_argument("--password-env", metavar="VAR", default=DEFAULT_PASSWORD_ENV if defaults else None,
                        help="environment variable holding the MQTT password (default: "
                             f"{where.format('password_env')}{DEFAULT_PASSWORD_ENV})")


def wants_tls(args: argparse.Namespace) -> bool:
    return bool(args.tls or args.ca_certs or args.certfile or args.keyfile or args.tls_insecure)


def tls_from_args(args: argparse.Namespace) -> TlsSettings | None:
    """The :class:`TlsSettings` the flags ask for (files checked), or None without TLS.
    Raises :class:`~sdk.errors.MqttConfigError` for a missing file or a lone certfile/keyfile."""
    if not wants_tls(args):
        return None
    tls = TlsSettings(args.ca_certs, args.certfile, args.keyfile, bool(args.tls_insecure))
    tls.check()
    return tls
