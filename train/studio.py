"""The studio: a local web app for the loop. See the fleet, label samples in the browser, retrain
and roll the new model out.

    python -m train.studio --store feedback/ --broker mqtt.local:1883
    python -m train.studio --store feedback/ --broker HOST:8883 --ca-certs ca.pem --collect \\
        --base runs/resnet_small-cifar --bundle bundles/rpi --sign-key fleet.key
    EDGECLF_STUDIO_TOKEN=... python -m train.studio --store feedback/ --host 0.0.0.0

Serves http://127.0.0.1:8765 by default. ``--host`` beyond loopback needs a password in the
environment (``EDGECLF_STUDIO_TOKEN``, or the variable ``--token-env`` names); every
state-changing request is checked for it and for a CSRF token (see :mod:`train.web.security`).
``--collect`` also runs a collector (as ``python -m train.collect``) into ``--store``; without it,
run ``train.collect`` beside the studio (both write the store safely). Retraining needs
``--base`` (and ``--bundle`` to export a bundle); publishing needs ``--broker`` and ``--sign-key``.
The library is :mod:`train.web`.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

from sdk.mqtt import credentials_from_env, parse_broker
from sdk.mqtt_args import add_credential_arguments, add_tls_arguments, tls_from_args
from sdk.topics import DEFAULT_PREFIX, check_prefix
from train.errors import ExitCode, InputError, UsageError, exit_codes_help, run_command

logger = logging.getLogger("train.studio")

EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.INPUT, ExitCode.MQTT_CONFIG)
DEFAULT_PORT = 8765


def build_parser() -> argparse.ArgumentParser:
    from train.web.security import TOKEN_ENV

    p = argparse.ArgumentParser(prog="python -m train.studio", description=__doc__, epilog=exit_codes_help(EXIT_CODES),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, type=Path,
                   help="feedback store folder (a train.collect store; created when missing or empty)")
    p.add_argument("--broker", help="MQTT broker HOST:PORT the devices use (the fleet page and publishing need it)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default: {DEFAULT_PREFIX})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default: 127.0.0.1; another needs a password, see --token-env)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default: {DEFAULT_PORT})")
    p.add_argument("--token-env", default=TOKEN_ENV, metavar="VAR",
                   help=f"environment variable holding the studio password (default: {TOKEN_ENV})")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another host name the browser may use for a loopback studio (e.g. behind an SSH tunnel)")
    p.add_argument("--collect", action="store_true", help="also collect the devices' samples into --store")
    p.add_argument("--labels", type=Path, metavar="TXT",
                   help="the classes, one per line in model index order (default: the store's, else --base's labels.txt)")
    p.add_argument("--base", type=Path, help="the training run the devices' model came from (to retrain)")
    p.add_argument("--bundle", type=Path, help="the bundle the devices run now (retrain exports like it)")
    p.add_argument("--device-config", type=Path, metavar="YAML",
                   help="the devices' config: its preprocess section applies to stored frames")
    p.add_argument("--runs-dir", type=Path, help="where retrains go and reports are read (default: beside --base)")
    p.add_argument("--sign-key", type=Path, help="private key that signs model updates (python -m train.publish keygen)")
    g = p.add_argument_group("TLS and credentials (the same flags as train.collect and train.publish)")
    add_tls_arguments(g)
    add_credential_arguments(g)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _labels(args: argparse.Namespace, store) -> list[str] | None:
    """The classes to label with: ``--labels``, else (for a store that was given none) the base run's."""
    path = args.labels
    if path is None:
        if store.labels_given or args.base is None or not (args.base / "labels.txt").is_file():
            return None
        path = args.base / "labels.txt"
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise UsageError(f"--labels {path}: cannot read ({e.strerror})") from e
    if not labels:
        raise UsageError(f"--labels {path}: no labels in it (expected one per line)")
    return labels


def _open_store(path: Path):
    from train.loop.samples import FeedbackError
    from train.loop.store import FeedbackStore

    if path.exists() and not path.is_dir():
        raise InputError(f"--store {path}: is a file, not a feedback store folder")
    if path.is_dir() and any(path.iterdir()) and not (path / "index.sqlite").is_file():
        raise InputError(f"--store {path}: not a feedback store (no index.sqlite in it); give a train.collect "
                         "store, or a new or empty folder to start one")
    try:
        return FeedbackStore(path)
    except (OSError, sqlite3.Error, FeedbackError) as e:
        raise InputError(f"--store {path}: cannot use it as a feedback store ({e})") from e


def _check_paths(args: argparse.Namespace) -> None:
    for flag, path, kind in (("--base", args.base, "dir"), ("--bundle", args.bundle, "dir"),
                             ("--device-config", args.device_config, "file"), ("--sign-key", args.sign_key, "file")):
        if path is not None and not (path.is_dir() if kind == "dir" else path.is_file()):
            raise UsageError(f"{flag} {path}: no such {'folder' if kind == 'dir' else 'file'}")
    if args.bundle is not None and args.base is None:
        raise UsageError("--bundle needs --base (the run to retrain)")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from train.web.app import StudioSettings, create_app
    from train.web.security import Guard, StudioSecurityError

    try:
        check_prefix(args.prefix)
    except ValueError as e:
        raise UsageError(f"--prefix: {e}") from e
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535 (got {args.port})")
    try:
        guard = Guard(args.host, os.environ.get(args.token_env), tuple(args.allowed_host))
    except StudioSecurityError as e:
        raise UsageError(str(e)) from e
    _check_paths(args)
    broker = parse_broker(args.broker) if args.broker else None  # MqttConfigError: 9
    tls = tls_from_args(args)
    user, password = credentials_from_env(args.username_env, args.password_env)
    store = _open_store(args.store)
    labels = _labels(args, store)
    if labels is not None:
        store.set_label_names(labels)
    settings = StudioSettings(store=args.store, broker=broker, prefix=args.prefix, tls=tls, username=user,
                              password=password, base_run=args.base, bundle=args.bundle,
                              device_config=args.device_config, runs_dir=args.runs_dir, sign_key=args.sign_key)
    app = create_app(settings, guard, store=store)
    collector = None
    if args.collect:
        if broker is None:
            raise UsageError("--collect needs --broker")
        from train.loop.collect import Collector

        collector = Collector(store, *broker, client_id=f"edgeclf-studio-{socket.gethostname()}", prefix=args.prefix,
                              tls=tls, username=user, password=password, rejected_dir=args.store / "rejected")
        collector.start()
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           proxy_headers=False, server_header=False,
                                           # an open fleet page's event stream must not hold up a stop
                                           timeout_graceful_shutdown=2))
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    where = f"[{args.host}]" if ":" in args.host else args.host
    logger.info("studio on http://%s:%d (store %s%s)", where, args.port, args.store,
                f", broker {args.broker}" if broker else "")
    try:
        server.run()
    finally:
        if collector is not None:
            collector.stop()
        store.close()
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_command(lambda: _serve(args))


if __name__ == "__main__":
    sys.exit(main())
