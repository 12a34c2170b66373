"""``python -m train.publish``: send a model bundle to devices over MQTT, roll back, make keys.

Needs no TensorFlow (only ``sdk`` and paho-mqtt; ``cryptography`` to sign)::

    python -m train.publish --bundle runs/X/bundles/rpi --device rpi4-1 --broker mqtt.local:1883 --wait 60
    python -m train.publish --bundle bundles/rpi --fleet --broker mqtt.local:8883 --ca-certs ca.pem \\
        --sign-key keys/edgeclf.key --wait 120
    python -m train.publish rollback --device rpi4-1 --broker mqtt.local:1883 --sign-key keys/edgeclf.key --wait 30
    python -m train.publish keygen keys/edgeclf        # keys/edgeclf.key (0600) + keys/edgeclf.pub

The library twins take the same arguments: :func:`train.loop.publish.publish_bundle`,
:func:`train.loop.publish.rollback` and :func:`train.loop.keys.generate_keypair`. Exit codes are the
project's one table (:class:`sdk.errors.ExitCode`); ``--help`` lists the ones each subcommand uses.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import textwrap
from dataclasses import asdict
from typing import Sequence

from sdk.mqtt import credentials_from_env
from sdk.mqtt_args import add_credential_arguments, add_tls_arguments, tls_from_args
from sdk.topics import DEFAULT_PREFIX
from train.errors import ExitCode, UsageError, exit_codes_help, run_command
from train.loop.keys import generate_keypair
from train.loop.publish import DeviceOutcome, publish_bundle, rollback

__all__ = ["PUBLISH_EXIT_CODES", "KEYGEN_EXIT_CODES", "main"]

# What sending (a bundle or a rollback) can end with, and what making keys can.
PUBLISH_EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.MQTT_CONFIG, ExitCode.BROKER_CERTIFICATE,
                      ExitCode.BROKER_HOSTNAME, ExitCode.BROKER_UNREACHABLE, ExitCode.DEVICE_REFUSED)
KEYGEN_EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE)


def _parser(prog: str, description: str, codes: Sequence[int]) -> argparse.ArgumentParser:
    """A parser whose epilog is the table of ``codes`` (kept as written); the description is
    wrapped to the terminal as argparse's default formatter would."""
    width = shutil.get_terminal_size().columns - 2
    return argparse.ArgumentParser(prog=prog, description=textwrap.fill(description, width),
                                   epilog=exit_codes_help(codes), formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", required=True, metavar="HOST:PORT", help="MQTT broker")
    g.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (mqtt.topic_prefix of the devices)")
    g.add_argument("--client-id", help="MQTT client id (default: random)")
    add_tls_arguments(g)
    add_credential_arguments(g)
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="give up connecting after S s")
    t = p.add_argument_group("targets")
    x = t.add_mutually_exclusive_group(required=True)
    x.add_argument("--device", action="extend", nargs="+", metavar="ID", help="device id(s)")
    x.add_argument("--fleet", action="store_true", help="every device (the fleet topic)")
    p.add_argument("--sign-key", metavar="KEY", help="ed25519 private key (PEM) to sign with")
    p.add_argument("--wait", type=float, metavar="S",
                   help="wait up to S s for every device's model/state to report the outcome")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def _connection_kwargs(a: argparse.Namespace) -> dict:
    tls = tls_from_args(a)  # unusable TLS files: MqttConfigError, exit 9 as in edge-classify and train.collect
    user, password = credentials_from_env(a.username_env, a.password_env)
    return {"prefix": a.prefix, "tls": tls, "username": user, "password": password, "client_id": a.client_id,
            "connect_timeout_s": a.connect_timeout, "sign_key": a.sign_key, "wait_s": a.wait,
            "devices": a.device, "fleet": a.fleet}


def _report(outcomes: list[DeviceOutcome], as_json: bool) -> int:
    if as_json:
        print(json.dumps([asdict(o) for o in outcomes]))
    else:
        for o in outcomes:
            print(o.line())
    if not outcomes:
        print("no device reported (none has a retained model/state on this broker)", file=sys.stderr)
        return ExitCode.DEVICE_REFUSED
    return ExitCode.OK if all(o.ok for o in outcomes) else ExitCode.DEVICE_REFUSED


def _setup_logging(verbose: int) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m train.publish`` (sending a bundle; ``rollback`` and ``keygen`` have their own)."""
    p = _parser("python -m train.publish", "Send a model bundle to devices over MQTT (subcommands: rollback, keygen).",
                PUBLISH_EXIT_CODES)
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle directory (python -m train.export)")
    p.add_argument("--chunk-size", default="256k", help="bytes per chunk message (e.g. 64k, 1m)")
    _add_connection(p)
    return p


def _cmd_publish(argv: Sequence[str]) -> int:
    a = build_parser().parse_args(argv)
    _setup_logging(a.verbose)
    outcomes = publish_bundle(a.bundle, a.broker, chunk_size=a.chunk_size, **_connection_kwargs(a))
    return _report(outcomes, a.json)


def _cmd_rollback(argv: Sequence[str]) -> int:
    p = _parser("python -m train.publish rollback", "Tell devices to swap back to their previous model.",
                PUBLISH_EXIT_CODES)
    _add_connection(p)
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    return _report(rollback(a.broker, **_connection_kwargs(a)), a.json)


def _cmd_keygen(argv: Sequence[str]) -> int:
    p = _parser("python -m train.publish keygen",
                "Make an ed25519 key pair: OUT_PREFIX.key (private, 0600; sign with --sign-key) and OUT_PREFIX.pub: "
                "copy it to every device as the file its update.public_key names (/etc/edgeclf/update.pub in "
                "firmware_configs/*.yaml). Devices refuse unsigned updates.", KEYGEN_EXIT_CODES)
    p.add_argument("out_prefix", metavar="OUT_PREFIX")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    a = p.parse_args(argv)
    try:
        key, pub, kid = generate_keypair(a.out_prefix, force=a.force)
    except ValueError as e:
        raise UsageError(str(e)) from e
    print(f"private key {key} (keep it secret, on this host: --sign-key {key}), public key {pub}, key_id {kid}\n"
          f"copy {pub} to every device as the file its update.public_key names "
          f"(/etc/edgeclf/update.pub in firmware_configs/*.yaml); devices refuse unsigned updates")
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = {"keygen": _cmd_keygen, "rollback": _cmd_rollback}.get(argv[0] if argv else "", _cmd_publish)
    if cmd is not _cmd_publish:
        argv = argv[1:]
    try:
        return run_command(lambda: cmd(argv))
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)


if __name__ == "__main__":
    sys.exit(main())
