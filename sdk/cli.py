"""``edge-classify``: classify camera frames on the device and publish them over MQTT.

A thin layer over :func:`sdk.run`: ``edge-classify --camera 0`` is
``sdk.run(Config(source="camera:0"))``. The YAML file (``--config``) comes first, flags
override it. SIGTERM / SIGINT stop the run cleanly: the queue is flushed, ``offline`` is
published, and the exit code is 0.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import re
import signal
import sys
import threading
from typing import Sequence

from .errors import EdgeError, ExitCode, exit_codes_help
from .mqtt_args import add_credential_arguments, add_tls_arguments, wants_tls

logger = logging.getLogger("sdk.cli")

SUBCOMMANDS = ("validate-config", "bench")
DEVICE_EXIT_CODES = [c for c in ExitCode if c <= ExitCode.BROKER_HOSTNAME]


DURATION_FORMS = "a number of seconds with an optional unit: 5, 2.5, 5s, 500ms, 2m, 1h"
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``5s``, ``500ms``, ``2m``, ``1h`` or a bare number of seconds (``5``, ``2.5``) as seconds (> 0);
    ``argparse.ArgumentTypeError`` naming the accepted forms otherwise."""
    m = _DURATION.fullmatch(text.strip())
    value = float(m.group(1)) * _UNIT_S[m.group(2) or "s"] if m else math.nan
    if not (value > 0 and math.isfinite(value)):
        why = "must be more than 0" if m else "is not a duration"
        raise argparse.ArgumentTypeError(f"{text!r} {why}: give {DURATION_FORMS}")
    return value


def summary(stats) -> dict:
    """The last line ``edge-classify`` prints (stderr, JSON): ``results`` made, ``samples`` sent (``captured``
    of them by capture mode); ``queued`` messages put in the outbox (results, samples, events),
    ``delivered`` ones the broker acknowledged, ``undelivered`` ones left in ``outbox`` for the next
    start (0 and null without MQTT)."""
    return {"frames": stats.frames, "results": stats.published, "samples": stats.samples,
            "captured": stats.captured, "queued": stats.queued,
            "delivered": stats.delivered, "undelivered": stats.undelivered, "outbox": stats.outbox,
            "fps": round(stats.fps, 2), "ended_by": stats.ended_by}


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-classify",
        description="Classify frames from a camera, video, RTSP stream or image folder with a model "
                    "bundle and publish the results over MQTT. Subcommands: validate-config FILE, bench BUNDLE.",
        epilog=exit_codes_help(DEVICE_EXIT_CODES), formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, metavar="N", help="camera index (/dev/videoN)")
    src.add_argument("--video", metavar="FILE", help="video file")
    src.add_argument("--rtsp", metavar="URL", help="RTSP (or HTTP) stream URL")
    src.add_argument("--images", metavar="DIR", help="folder of images")
    p.add_argument("--loop", action="store_true", default=None, help="start a video / image folder over at its end")
    p.add_argument("--config", metavar="FILE", help="YAML config (firmware_configs/<device>.yaml); flags override it")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", metavar="BUNDLE", help="model bundle directory")
    model.add_argument("--no-model", action="store_true",
                       help="run without a model, capturing frames only (needs --capture-every): no results")
    p.add_argument("--capture-every", type=parse_duration, metavar="DURATION",
                   help="capture mode: also send one frame every DURATION (5s, 500ms, 2m, 1h, or seconds) as a "
                        "sample for labelling, with or without a model (sampling.capture_every_s)")
    p.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker")
    p.add_argument("--no-mqtt", action="store_true", help="classify and log only, publish nothing")
    p.add_argument("--device-id", metavar="ID", help="device name in topics")
    p.add_argument("--top-k", type=int, metavar="K", help="classes per result")
    p.add_argument("--threshold", type=float, metavar="T", help="leave out classes scoring below T")
    p.add_argument("--fps-cap", type=float, metavar="FPS", help="process at most FPS frames per second")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--delegate", choices=["auto", "none", "xnnpack", "edgetpu", "gpu"], help="interpreter delegate")
    p.add_argument("--threads", type=int, metavar="N", help="interpreter threads")
    p.add_argument("--preprocess", choices=["auto", "plain", "digit"], help="override the bundle's preprocessing")
    p.add_argument("--publish", choices=["every", "change"], help="publish every frame or only on a label change")
    p.add_argument("--outbox", metavar="PATH", help="store-and-forward sqlite file (':memory:' for none)")
    g = p.add_argument_group("broker TLS and credentials (override mqtt.tls and mqtt.*_env of the config)")
    add_tls_arguments(g)
    add_credential_arguments(g, defaults=False)
    p.add_argument("--persistent-session", action="store_true", default=None,
                   help="keep the MQTT session on the broker (updates sent while offline arrive on reconnect)")
    p.add_argument("--update-key", metavar="PUB", help="ed25519 public key: accept only model updates signed with it")
    p.add_argument("--update-store", metavar="DIR", help="where received model bundles are kept")
    p.add_argument("--no-update", action="store_true", help="ignore model updates over MQTT")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="errors only, no status line")
    return p


def _overrides(a: argparse.Namespace) -> dict:
    o: dict = {}
    if a.camera is not None:
        o["source"] = f"camera:{a.camera}"
    elif a.video is not None:
        o["source"] = f"video:{a.video}"
    elif a.rtsp is not None:
        o["source"] = a.rtsp
    elif a.images is not None:
        o["source"] = f"images:{a.images}"
    simple = {"loop": a.loop, "model": a.model, "device_id": a.device_id, "top_k": a.top_k,
              "threshold": a.threshold, "fps_cap": a.fps_cap, "max_frames": a.max_frames}
    o.update({k: v for k, v in simple.items() if v is not None})
    if a.no_model:
        o["model"] = None
    mqtt = {}
    if a.broker is not None:
        mqtt["broker"] = a.broker
    if a.no_mqtt:
        mqtt["enabled"] = False
    if a.outbox is not None:
        mqtt["outbox_path"] = a.outbox
    if a.persistent_session:
        mqtt["persistent_session"] = True
    if wants_tls(a):
        tls = {"ca_certs": a.ca_certs, "certfile": a.certfile, "keyfile": a.keyfile, "insecure": a.tls_insecure}
        mqtt["tls"] = {"enabled": True, **{k: v for k, v in tls.items() if v is not None}}
    for key in ("username_env", "password_env"):
        if getattr(a, key) is not None:
            mqtt[key] = getattr(a, key)
    if mqtt:
        o["mqtt"] = mqtt
    update = {k: v for k, v in {"public_key": a.update_key, "store_dir": a.update_store}.items() if v is not None}
    if a.no_update:
        update["enabled"] = False
    if update:
        o["update"] = update
    runtime = {k: v for k, v in {"delegate": a.delegate, "num_threads": a.threads}.items() if v is not None}
    if runtime:
        o["runtime"] = runtime
    if a.preprocess:
        o["preprocess"] = {"mode": a.preprocess}
    if a.publish:
        o["publish"] = {"mode": a.publish}
    if a.capture_every is not None:
        o["sampling"] = {"capture_every_s": a.capture_every}
    return o


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_run(argv: Sequence[str]) -> int:
    from .config import load_config, resolved_yaml

    a = _run_parser().parse_args(argv)
    _setup_logging(a.verbose, a.quiet)
    config = load_config(a.config, _overrides(a))
    if a.print_config:
        sys.stdout.write(resolved_yaml(config))
        return 0
    stop = threading.Event()

    def _stop(signum, frame):
        logger.warning("signal %d: stopping (flushing the queue)", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    from .app import run

    status = sys.stderr if (sys.stderr.isatty() and not a.quiet) else None
    stats = run(config, stop=stop, status_stream=status)
    print(json.dumps(summary(stats)), file=sys.stderr)
    return 0


def _cmd_validate(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="edge-classify validate-config", description="Check a config file and exit.",
                                epilog=exit_codes_help(DEVICE_EXIT_CODES), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    a = p.parse_args(argv)
    from .config import load_config

    c = load_config(a.file)
    model = c.model if c.model is not None else f"none (capture every {c.sampling.capture_every_s:g} s)"
    print(f"OK: {a.file} (device {c.device_id}, source {c.source}, model {model}, broker {c.mqtt.broker})")
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="edge-classify bench", description="Interpreter latency of a bundle.",
                                epilog=exit_codes_help(DEVICE_EXIT_CODES), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--runs", type=_positive_int, default=500)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int)
    p.add_argument("--delegate", default="auto", choices=["auto", "none", "xnnpack", "edgetpu", "gpu"])
    p.add_argument("--video", help="also measure the OpenCV decode rate of this video")
    p.add_argument("--json", action="store_true", help="print JSON only")
    a = p.parse_args(argv)
    _setup_logging(0, False)
    from .bench import bench_decode, bench_interpreter

    r = bench_interpreter(a.bundle, a.runs, a.warmup, a.delegate, a.threads)
    if a.video:
        r["decode"] = bench_decode(a.video)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} {r['version']} (delegate {r['delegate']}): latency p50 {r['p50_ms']:.3f} ms, "
              f"p95 {r['p95_ms']:.3f} ms, {r['fps']} inferences/s over {r['runs']} runs")
        if a.video:
            print(f"decode {a.video}: {r['decode']['fps']} fps over {r['decode']['frames']} frames")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = {"validate-config": _cmd_validate, "bench": _cmd_bench}.get(argv[0] if argv else "", _cmd_run)
    if cmd is not _cmd_run:
        argv = argv[1:]
    try:
        return cmd(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    except EdgeError as e:
        print(f"edge-classify: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception:  # a ValueError here is a bug too: bad settings arrive as ConfigError (sdk.app)
        logger.exception("unexpected error")
        return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
