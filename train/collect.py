"""Collect the uncertain frames devices send back (``<prefix>/v1/+/sample``) into a feedback store.

    python -m train.collect --broker mqtt.local:1883 --out feedback/
    python -m train.collect --broker HOST:8883 --out feedback/ --ca-certs ca.pem --group site-a --max-mb 500

Runs until SIGTERM/SIGINT (exit 0, with a summary), ``--max-messages`` handled or ``--timeout``
seconds. At the timeout it exits 12 if it never reached the broker, 16 if it handled fewer than
``--max-messages``. A broker whose TLS certificate is refused ends it at once (10, 11: the same
codes as ``edge-classify``). Nothing is lost while it is down: see :mod:`train.loop.collect`, whose
:class:`~train.loop.collect.Collector` is the library twin.
"""
from __future__ import annotations

import argparse
import logging
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from sdk.mqtt import credentials_from_env, parse_broker
from sdk.mqtt_args import add_credential_arguments, add_tls_arguments, tls_from_args
from sdk.topics import DEFAULT_PREFIX, check_prefix, check_segment
from train.errors import BrokerUnreachableError, ExitCode, IncompleteError, exit_codes_help, run_command
from train.loop.collect import WEEK_S, Collector
from train.loop.samples import FeedbackError
from train.loop.store import FeedbackStore

logger = logging.getLogger("train.collect")

EXIT_CODES = (ExitCode.OK, ExitCode.INTERNAL, ExitCode.USAGE, ExitCode.INPUT, ExitCode.MQTT_CONFIG,
              ExitCode.BROKER_CERTIFICATE, ExitCode.BROKER_HOSTNAME, ExitCode.BROKER_UNREACHABLE, ExitCode.INCOMPLETE)


def _number(kind: type, minimum: float, strict: bool = False):
    """An argparse type: ``kind`` (int or float) at least ``minimum`` (above it when ``strict``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum} (got {text})")
        return value
    return parse


def _checked(check: Callable[[str], str]):
    """An argparse type from an ``sdk.topics`` check (which raises ValueError naming what is valid)."""
    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _client_id(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (the broker keys the session on it)")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.collect", description=__doc__, epilog=exit_codes_help(EXIT_CODES),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, help="MQTT broker HOST:PORT (port defaults to 1883)")
    p.add_argument("--out", required=True, type=Path, help="feedback store folder (created if missing)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, type=_checked(check_prefix),
                   help=f"topic prefix the devices use (default: {DEFAULT_PREFIX})")
    p.add_argument("--group", default="collectors", type=_checked(lambda g: check_segment(g, "shared-subscription group")),
                   help="shared-subscription group (default: collectors)")
    p.add_argument("--no-share", action="store_true", help="plain subscription: this collector gets every sample")
    p.add_argument("--client-id", type=_client_id,
                   help="stable MQTT client id (default: edgeclf-collector-<group>-<host name>)")
    p.add_argument("--session-expiry", type=_number(int, 0), default=WEEK_S,
                   help="seconds the broker keeps the session and queues samples while away (default: 7 days)")
    p.add_argument("--max-samples", type=_number(int, 1),
                   help="keep at most this many samples (the oldest pending ones go first)")
    p.add_argument("--max-mb", type=_number(float, 0, strict=True), help="keep at most this many MB of images")
    p.add_argument("--labels", type=Path, help="labels.txt (one per line, model index order) the labels must be from")
    p.add_argument("--dedup-distance", type=_number(int, 0), default=4,
                   help="perceptual-hash bits under which a sample is a duplicate of a recent one (default: 4)")
    p.add_argument("--rejected-mb", type=_number(float, 0), default=10.0,
                   help="keep invalid payloads in <out>/rejected/ up to this many MB (0: do not keep; default: 10)")
    g = p.add_argument_group("TLS and credentials (the same flags as train.publish and edge-classify)")
    add_tls_arguments(g)
    add_credential_arguments(g)
    # the spellings of earlier releases, kept working
    for old, dest in (("--tls-ca", "ca_certs"), ("--tls-cert", "certfile"), ("--tls-key", "keyfile")):
        p.add_argument(old, dest=dest, help=argparse.SUPPRESS)
    p.add_argument("--max-messages", type=_number(int, 1),
                   help="exit after handling this many messages (scripted runs)")
    p.add_argument("--timeout", type=_number(float, 0, strict=True), help="exit after this many seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _read_labels(p: argparse.ArgumentParser, path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        p.error(f"--labels {path}: cannot read ({e.strerror})")
    if not labels:
        p.error(f"--labels {path}: no labels in it (expected one per line)")
    return labels


def _open_store(p: argparse.ArgumentParser, args: argparse.Namespace, labels: list[str] | None) -> FeedbackStore:
    try:
        return FeedbackStore(args.out, labels=labels, max_samples=args.max_samples,
                             max_bytes=int(args.max_mb * 1e6) if args.max_mb else None,
                             dedup_distance=args.dedup_distance)
    except (OSError, sqlite3.Error, FeedbackError) as e:
        p.error(f"--out {args.out}: cannot use it as a feedback store ({e})")


def _wait(collector: Collector, args: argparse.Namespace, stop: threading.Event) -> int:
    """Until a stop signal, ``--max-messages`` or ``--timeout``; raises the collector's refusal."""
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while not stop.is_set():
        if collector.fatal is not None:
            raise collector.fatal  # the broker's certificate refused: 10 or 11
        if args.max_messages and collector.handled >= args.max_messages:
            break
        if deadline is not None and time.monotonic() >= deadline:
            if collector.connects == 0:
                why = f": {collector.last_error}" if collector.last_error else ""
                raise BrokerUnreachableError(f"broker {collector.host}:{collector.port} not reached in "
                                             f"{args.timeout:g} s{why}")
            if args.max_messages:
                raise IncompleteError(f"timed out after {args.timeout:g} s with {collector.handled} of "
                                 f"{args.max_messages} messages")
            break
        stop.wait(0.1)
    return ExitCode.OK


def _collect(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    host, port = parse_broker(args.broker)  # MqttConfigError (9), as every bad MQTT setting below
    tls = tls_from_args(args)
    labels = _read_labels(p, args.labels)
    user, password = credentials_from_env(args.username_env, args.password_env)
    store = _open_store(p, args, labels)
    group = None if args.no_share else args.group
    client_id = args.client_id or f"edgeclf-collector-{group or 'all'}-{socket.gethostname()}"
    collector = Collector(store, host, port, client_id=client_id, prefix=args.prefix, group=group,
                          session_expiry=args.session_expiry, tls=tls, username=user, password=password,
                          rejected_dir=args.out / "rejected", rejected_max_bytes=int(args.rejected_mb * 1e6))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with store, collector:
        logger.info("collecting %s from %s:%d into %s", collector.subscription, host, port, args.out)
        return _wait(collector, args, stop)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_command(lambda: _collect(p, args))


if __name__ == "__main__":
    sys.exit(main())
