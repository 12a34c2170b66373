"""Zero-setup device demo: classify a video and publish over an in-process MQTT broker (amqtt).

    python examples/demo_device.py --model BUNDLE [--video FILE] [--frames 30]

Starts an amqtt broker inside this process on a free loopback port, subscribes to ``edge/#``
like any consumer would (``mosquitto_sub``, Home Assistant, Node-RED), runs ``sdk.run`` (the
library twin of ``edge-classify``) on the video, and prints what the subscriber received.
Without ``--video``, a video of real MNIST test digits on paper (from ``examples/mnist_sample.npz``)
is written first. ``examples/demo.py`` trains and exports the model first and then runs this.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
SAMPLE = REPO / "examples" / "mnist_sample.npz"  # real MNIST digits shipped with the repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessBroker:
    """amqtt on its own event-loop thread; ``with InProcessBroker() as b: b.port``."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="amqtt", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            from amqtt.broker import Broker
        except ImportError as e:
            self._error = ImportError("the demo broker needs amqtt: pip install 'edgeclf[demo]'")
            self._error.__cause__ = e
            self._ready.set()
            return

        async def start():
            self.broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
            await self.broker.start()

        try:
            self._loop.run_until_complete(start())
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> "InProcessBroker":
        self._thread.start()
        self._ready.wait(20)
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.broker.shutdown(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def subscriber(port: int, received: list):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-subscriber")
    subscribed = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("edge/#", qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = lambda cl, u, m: received.append((m.topic, m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    subscribed.wait(10)
    return c


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True,
                    help="model bundle (python -m train.export, or run examples/demo.py for the whole loop)")
    ap.add_argument("--video", type=Path, help="video file (default: write one of MNIST test digits on paper)")
    ap.add_argument("--frames", type=int, default=30, help="digits in the generated video")
    ap.add_argument("--device-id", default="demo")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgeclf-demo-"))
    if a.video is None:
        import numpy as np

        from train.data.videos import write_digit_video

        x = np.load(SAMPLE)["x_test"]
        a.video = write_digit_video(work / "digits.avi", x[: a.frames], seed=0)

    import sdk
    from sdk.config import Config

    received: list = []
    with InProcessBroker() as broker:
        sub = subscriber(broker.port, received)
        print(f"in-process broker on 127.0.0.1:{broker.port}; subscriber on edge/#", flush=True)
        t = time.monotonic()
        stats = sdk.run(Config(device_id=a.device_id, source=f"video:{a.video}", model=str(a.model), top_k=3,
                               mqtt={"broker": f"127.0.0.1:{broker.port}", "outbox_path": ":memory:"},
                               update={"enabled": False},  # the demo sends no model updates
                               metrics_interval_s=1.0))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(t.endswith("/result") for t, _ in received) < stats.published:
            time.sleep(0.05)
        sub.disconnect()
        sub.loop_stop()
    counts = collections.Counter(t for t, _ in received)
    print(f"classified {stats.frames} frames in {time.monotonic() - t:.2f}s ({stats.fps:.0f} fps)")
    print("the subscriber received:")
    for topic, n in sorted(counts.items()):
        print(f"  {n:5d}  {topic}")
    results = [json.loads(p) for t, p in received if t.endswith("/result")]
    for r in results[:5]:
        top = ", ".join(f"{c['label']}:{c['score']:.2f}" for c in r["top_k"])
        print(f"  seq {r['seq']:3d} frame {r['frame_id']:3d}  top-3 [{top}]  {r['latency_ms']['total']:.2f} ms")
    if results:
        print("  one result message, as sent:")
        print("  " + json.dumps(results[0]))
    return 0 if len(results) == stats.published else 1


if __name__ == "__main__":
    sys.exit(main())
