"""Model updates over MQTT on real parts: mosquitto, LiteRT, a real video and ``sdk.run`` in a thread.

Three real bundles: the session fixture (v1), the same architecture trained briefly with another
seed (``update-2``: other weights, same input) and a 32x32-input model (the mismatch case); the
last two are built once and cached in pytest's cache directory like the fixture.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import jsonschema
import numpy as np
import pytest

import sdk
from contract import validate
from mqtt_fixtures import Broker, Collector, mosquitto  # noqa: F401  (fixture)
from sdk.bundle import MODEL_FILE, BundleError, load_manifest, verify_bundle
from sdk.config import Config, config_from_dict
from sdk.errors import ConfigError, ExitCode
from sdk.messages import load_schema
from sdk.mqtt import MqttPublisher, Outbox, TlsSettings
from sdk.topics import Topics, parse_model_chunk
from sdk.update import (
    ModelStore,
    UpdateRefused,
    key_id,
    load_public_key,
    make_rollback,
    make_update,
    pack_bundle,
    safe_extract,
    verify,
)
from sdk_bundle_fixture import load_mnist, sdk_bundle, small_cnn, write_int8_bundle  # noqa: F401  (fixture)
from train.data.videos import write_digit_video
from train.loop.keys import generate_keypair, load_private_key, sign, signer
from train.loop.publish import DeviceOutcome, publish_bundle, rollback
from train.publish import main as publish_main

REPO = Path(__file__).resolve().parents[1]
DEVICE = "dev1"
UPDATE_FIXTURE = "model-update-1"
T = Topics(DEVICE)


_FLEET: dict = {}


def fleet_key() -> tuple:
    """The test fleet's ed25519 key pair, made once: ``(private key, public key file)``. Devices
    refuse unsigned updates by default, so the end-to-end tests sign like a real fleet does."""
    if not _FLEET:
        priv, pub, _ = generate_keypair(Path(tempfile.mkdtemp(prefix="edgeclf-fleet-")) / "fleet")
        _FLEET.update(key=load_private_key(priv), pub=pub)
    return _FLEET["key"], _FLEET["pub"]


def device_update(*args, **kw):
    """``make_update`` addressed to the test device (``to`` may be given), unsigned unless ``signer``."""
    return make_update(*args, **{"to": DEVICE, **kw})


# -- bundles --------------------------------------------------------------------------------
def build_variant(out_dir: Path, mnist_dir: Path, *, version: str, side: int = 28, seed: int = 1,
                  n_train: int = 6000, name: str = "lenet-mnist-test") -> Path:
    """A real bundle: the fixture's architecture trained for one epoch with another seed (other
    weights), ``side`` x ``side`` input, full INT8."""
    import cv2

    from train._tf import keras, tf

    tf.random.set_seed(seed)
    x, y = load_mnist(mnist_dir, "train")
    idx = np.random.default_rng(seed).permutation(len(x))[:n_train]
    x, y = x[idx], y[idx].astype("int64")
    if side != 28:
        x = np.stack([cv2.resize(i, (side, side), interpolation=cv2.INTER_LINEAR) for i in x])
    x = x.astype("float32")[..., None]
    model = small_cnn(side)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    write_int8_bundle(model, x[:100], out_dir, name=name, version=version)
    return out_dir


VARIANTS = {"v2": {"version": "update-2", "side": 28, "seed": 1},
            "wide": {"version": "wide-1", "side": 32, "seed": 2, "n_train": 3000, "name": "lenet-mnist-32"}}


@pytest.fixture(scope="session")
def bundles(request, tmp_path_factory, mnist_dir, sdk_bundle) -> dict[str, Path]:
    cache = getattr(request.config, "cache", None)
    root = (Path(cache.mkdir("model-update")) if cache is not None else tmp_path_factory.mktemp("mu")) / UPDATE_FIXTURE
    out = {"v1": sdk_bundle}
    for tag, kw in VARIANTS.items():
        path = root / tag
        try:
            verify_bundle(path)
        except BundleError:
            shutil.rmtree(path, ignore_errors=True)
            tmp = root / f"{tag}.tmp{time.time_ns()}"
            build_variant(tmp, mnist_dir, **kw)
            try:
                tmp.rename(path)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        out[tag] = path
    return out


def version(bundle: Path) -> str:
    return load_manifest(bundle).version


@pytest.fixture(scope="module")
def loop_video(tmp_path_factory, mnist_dir):
    x, _ = load_mnist(mnist_dir, "test")
    return write_digit_video(tmp_path_factory.mktemp("video") / "loop.avi", x[500:530], seed=4)


# -- a device running sdk.run in a thread ------------------------------------------------------
def device_config(bundle, video, broker, tmp_path, *, mqtt=None, **update) -> Config:
    """The test device; it trusts :func:`fleet_key` unless ``update`` says otherwise (``public_key``,
    ``allow_unsigned``)."""
    if "public_key" not in update and not update.get("allow_unsigned"):
        update["public_key"] = str(fleet_key()[1])
    return Config(device_id=DEVICE, source=f"video:{video}", loop=True, fps_cap=25, model=str(bundle),
                  mqtt={"broker": broker, "outbox_path": str(tmp_path / "outbox.sqlite"), "reconnect_min_s": 0.2,
                        "reconnect_max_s": 1.0, **(mqtt or {})},
                  sampling={"enabled": False}, metrics_interval_s=0.5,
                  update={"store_dir": str(tmp_path / "store"), **update})


class Device:
    """``sdk.run(config)`` on a looping video in a thread, stopped on exit. With ``col``, entering
    waits until ``ready(col)`` holds, by default until 5 more results have arrived."""

    def __init__(self, config: Config, col: Collector | None = None, ready=None):
        self.config, self.col, self.ready = config, col, ready
        self.stop = threading.Event()
        self.stats = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.stats = sdk.run(self.config, stop=self.stop)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def __enter__(self) -> "Device":
        n0 = len(self.col.on(f"{DEVICE}/result")) if self.col else 0
        self.thread.start()
        if self.col is not None:  # ready: its model/state is out and results flow
            ready = self.ready or (lambda c: len(c.on(f"{DEVICE}/result")) >= n0 + 5)
            assert self.col.wait_for(ready, 30), self.error
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None and exc[0] is None:
            raise self.error


def collector(port) -> Collector:
    col = Collector(port, ("edge/#",))
    assert col.wait_subscribed()
    return col


def states(col) -> list[dict]:
    return validate("model-state", [p for p in col.on(f"{DEVICE}/model/state") if p])


def outcome_of(col, update_id: str, timeout: float = 20) -> dict:
    def find(c):
        return next((s for s in reversed(states(c)) if (s["last_update"] or {}).get("update_id") == update_id), None)

    assert col.wait_for(lambda c: find(c) is not None, timeout), f"no model/state for {update_id}"
    return find(col)


def results(col) -> list[dict]:
    return validate("result", col.on(f"{DEVICE}/result"))


def send(port: int, msgs) -> None:
    """Publish raw update messages with QoS 1 and wait for the broker's acknowledgements."""
    with MqttPublisher("127.0.0.1", port, outbox=Outbox(":memory:", 100000)) as pub:
        assert pub.wait_connected(10)
        for topic, payload in msgs:
            pub.publish(topic, payload, qos=1)
        assert pub.flush(20)


def flowing(col, timeout: float = 10, n: int = 5) -> list[dict]:
    """Results keep arriving (the run did not stop): the first ``n`` of frames captured after this
    call, so each was classified after whatever happened before it (e.g. a swap that ``model/state``
    reported; results queued before that may still be on their way to this subscriber)."""
    n0, t0 = len(col.on(f"{DEVICE}/result")), time.time()

    def fresh(c) -> list[bytes]:
        return [p for p in c.on(f"{DEVICE}/result")[n0:] if json.loads(p)["ts"] > t0]

    assert col.wait_for(lambda c: len(fresh(c)) >= n, timeout), "frames stopped flowing"
    return validate("result", fresh(col)[:n])


# -- end to end ---------------------------------------------------------------------------------
def test_update_applied_while_running_without_losing_a_frame(bundles, loop_video, mosquitto, tmp_path):
    v1, v2 = version(bundles["v1"]), version(bundles["v2"])
    col = Collector(mosquitto.port, ("edge/#", "homeassistant/#"))
    assert col.wait_subscribed()
    config = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path)
    config.homeassistant.enabled = True
    dev = Device(config, col)

    def ha_model(c) -> str | None:  # the model the Home Assistant device card shows
        cards = c.on(f"homeassistant/sensor/{DEVICE}/label/config")
        return json.loads(cards[-1])["device"]["model"] if cards else None

    with dev:
        name = load_manifest(bundles["v1"]).name
        assert col.wait_for(lambda c: ha_model(c) == f"{name} {v1}")
        first = states(col)[0]
        assert first["active"]["version"] == v1 and first["previous"] is None and first["last_update"] is None
        out = publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], chunk_size="16k", wait_s=30,
                             sign_key=fleet_key()[0])
        assert [(o.device, o.outcome) for o in out] == [(DEVICE, "applied")], out
        assert out[0].version == v2 and out[0].duration_s > 0
        assert all(r["model"]["version"] == v2 for r in flowing(col, n=10))
        assert col.wait_for(lambda c: validate("metrics", c.on("/metrics"))[-1]["model"]["version"] == v2)
        # the Home Assistant device card follows the swap
        assert col.wait_for(lambda c: ha_model(c) == f"{load_manifest(bundles['v2']).name} {v2}")
    stats = dev.stats
    assert stats.ended_by == "stopped" and stats.extra["model_swaps"] == 1
    assert col.wait_for(lambda c: len(c.on(f"{DEVICE}/result")) >= stats.published)
    res = sorted(results(col), key=lambda r: r["seq"])
    assert [r["seq"] for r in res] == list(range(stats.published)), "a result was lost"
    assert [r["frame_id"] for r in res] == list(range(res[0]["frame_id"], res[0]["frame_id"] + len(res))), \
        "a frame was skipped"
    versions = [r["model"]["version"] for r in res]
    k = versions.index(v2)
    assert set(versions[:k]) == {v1} and set(versions[k:]) == {v2} and k >= 5  # one switch, between frames
    assert res[k]["model"]["sha256"] == load_manifest(bundles["v2"]).sha256
    last = states(col)[-1]
    assert last["active"] == {**{k_: load_manifest(bundles["v2"]).model_dump()[k_] for k_ in ("name", "version", "sha256")},
                              "update_id": out[0].update_id}
    assert last["previous"]["version"] == v1 and last["last_update"]["outcome"] == "applied"
    assert last["last_update"]["source"] == "device" and last["last_update"]["reason"] is None
    events = validate("event", col.on(f"{DEVICE}/event"))
    upd = [e for e in events if e["event"] == "model_updated"]
    assert len(upd) == 1 and upd[0]["detail"]["to"]["version"] == v2 and upd[0]["detail"]["from"]["version"] == v1
    col.close()


def test_restart_rollback_and_fallback(bundles, loop_video, mosquitto, tmp_path):
    """The active model persists across a restart; rollback swaps back (and forth); a stored
    model that no longer loads makes the device fall back to the configured one."""
    v1, v2 = version(bundles["v1"]), version(bundles["v2"])
    col = collector(mosquitto.port)
    cfg = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path)
    with Device(cfg, col):
        out = publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], wait_s=30, sign_key=fleet_key()[0])
        assert out[0].outcome == "applied", out
    store = tmp_path / "store"
    active = json.loads((store / "active.json").read_text())["active"]
    assert active["version"] == v2 and (store / active["dir"] / "manifest.json").is_file()

    col.messages.clear()
    with Device(cfg, col):  # restart: starts with the updated model
        assert results(col)[0]["model"]["version"] == v2
        s0 = states(col)[0]
        assert s0["active"]["version"] == v2 and s0["previous"]["version"] == v1
        back = rollback(mosquitto.address, devices=[DEVICE], wait_s=30, sign_key=fleet_key()[0])
        assert [(o.outcome, o.version) for o in back] == [("rolled_back", v1)], back
        assert all(r["model"]["version"] == v1 for r in flowing(col))
        s = outcome_of(col, back[0].update_id)
        assert s["active"]["version"] == v1 and s["previous"]["version"] == v2
        again = rollback(mosquitto.address, devices=[DEVICE], wait_s=30, sign_key=fleet_key()[0])  # it toggles
        assert again[0].outcome == "rolled_back" and again[0].version == v2
        assert all(r["model"]["version"] == v2 for r in flowing(col))
    assert "model_rolled_back" in {e["event"] for e in validate("event", col.on("/event"))}

    model = store / json.loads((store / "active.json").read_text())["active"]["dir"] / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    col.messages.clear()
    with Device(cfg, col):  # the stored model is corrupt: the configured one runs
        assert {r["model"]["version"] for r in results(col)} == {v1}
        assert states(col)[0]["active"]["version"] == v1 and states(col)[0]["previous"] is None
    col.close()


def test_signed_updates_accepted_unsigned_and_badly_signed_refused(bundles, loop_video, mosquitto, tmp_path):
    v1, v2 = version(bundles["v1"]), version(bundles["v2"])
    _, trusted_pub, trusted_id = generate_keypair(tmp_path / "keys" / "trusted")
    trusted = tmp_path / "keys" / "trusted.key"
    rogue_key, _, _ = generate_keypair(tmp_path / "keys" / "rogue")
    col = collector(mosquitto.port)
    with Device(device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, public_key=str(trusted_pub)),
                col):
        def refused(out, *words):
            assert len(out) == 1 and out[0].outcome == "refused", out
            assert all(w in out[0].reason for w in words), out[0].reason
            assert all(r["model"]["version"] == v1 for r in flowing(col))

        refused(publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], wait_s=20), "unsigned", trusted_id)
        refused(publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], sign_key=rogue_key, wait_s=20),
                "trusts key", trusted_id)
        # a valid signature, but the claimed version (or the archive) was swapped afterwards
        upd = device_update(pack_bundle(bundles["v2"]), load_manifest(bundles["v2"]), signer=signer(load_private_key(trusted)))
        upd.begin["version"] = "9.9-evil"
        send(mosquitto.port, upd.messages(T.model_set))
        s = outcome_of(col, upd.update_id)
        assert s["last_update"]["outcome"] == "refused" and "bad signature" in s["last_update"]["reason"]
        refused(rollback(mosquitto.address, devices=[DEVICE], wait_s=20), "unsigned")
        out = publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], sign_key=trusted, wait_s=30)
        assert out[0].outcome == "applied", out
        assert all(r["model"]["version"] == v2 for r in flowing(col))
        back = rollback(mosquitto.address, devices=[DEVICE], sign_key=trusted, wait_s=20)
        assert back[0].outcome == "rolled_back" and back[0].version == v1
    col.close()


def test_signed_commands_are_bound_to_their_target(bundles, loop_video, mosquitto, tmp_path):
    """A signed command re-published on another device's (or the fleet's) topic is refused, and
    the refusal does not use up its update id."""
    v1, v2 = version(bundles["v1"]), version(bundles["v2"])
    _, pub, _ = generate_keypair(tmp_path / "keys" / "ops")
    key = load_private_key(tmp_path / "keys" / "ops.key")
    col = collector(mosquitto.port)

    def last_update(uid, outcome):
        def find(c):
            return next((s["last_update"] for s in reversed(states(c))
                         if (s["last_update"] or {}).get("update_id") == uid
                         and s["last_update"]["outcome"] == outcome), None)

        assert col.wait_for(lambda c: find(c) is not None, 30), f"no {outcome} for {uid}"
        return find(col)

    with Device(device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, public_key=str(pub)), col):
        # a begin signed for this device, re-published (with its chunks) on the fleet topic
        upd = device_update(pack_bundle(bundles["v2"]), load_manifest(bundles["v2"]), signer=signer(key),
                            chunk_size=64 * 1024)
        send(mosquitto.port, upd.messages(T.fleet_model_set))
        lu = last_update(upd.update_id, "refused")
        assert lu["source"] == "fleet" and f"addressed to '{DEVICE}'" in lu["reason"] and "fleet" in lu["reason"]
        assert all(r["model"]["version"] == v1 for r in flowing(col))
        # the refused id is not remembered: the same update on the device's own topic is applied
        send(mosquitto.port, upd.messages(T.model_set))
        assert last_update(upd.update_id, "applied")["version"] == v2
        # a rollback signed for another device, re-published on this device's topic
        rb = make_rollback(to="dev2", signer=signer(key))
        send(mosquitto.port, [(T.model_set, json.dumps(rb).encode())])
        lu = last_update(rb["update_id"], "refused")
        assert "rollback addressed to 'dev2'" in lu["reason"], lu
        assert all(r["model"]["version"] == v2 for r in flowing(col))
        # a fleet rollback on the device topic is refused too; the right one works
        rb = make_rollback(to="fleet", signer=signer(key))
        send(mosquitto.port, [(T.model_set, json.dumps(rb).encode())])
        assert "addressed to 'fleet'" in last_update(rb["update_id"], "refused")["reason"]
        back = rollback(mosquitto.address, devices=[DEVICE], sign_key=key, wait_s=20)
        assert back[0].outcome == "rolled_back" and back[0].version == v1
    col.close()


def test_old_signed_commands_are_refused_as_replays(bundles, loop_video, mosquitto, tmp_path):
    """A signed command must be newer than the last signed one accepted (kept in active.json, so
    across restarts) and, with update.max_age_s, no older than that by the device's clock."""
    from datetime import datetime, timedelta, timezone

    v2 = version(bundles["v2"])
    _, pub, _ = generate_keypair(tmp_path / "keys" / "ops")
    key = load_private_key(tmp_path / "keys" / "ops.key")
    archive, m2 = pack_bundle(bundles["v2"]), load_manifest(bundles["v2"])
    old = device_update(archive, m2, signer=signer(key), chunk_size=64 * 1024)  # captured earlier, never applied
    time.sleep(0.01)
    col = collector(mosquitto.port)
    config = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, public_key=str(pub))

    def outcome(msgs, uid):
        send(mosquitto.port, msgs)
        return outcome_of(col, uid)["last_update"]

    with Device(config, col):
        new = device_update(archive, m2, signer=signer(key), chunk_size=64 * 1024)
        assert outcome(new.messages(T.model_set), new.update_id)["outcome"] == "applied"
        lu = outcome(old.messages(T.model_set), old.update_id)
        assert lu["outcome"] == "refused" and "replayed or out-of-order begin" in lu["reason"], lu
        assert all(r["model"]["version"] == v2 for r in flowing(col))
    with Device(config, col):  # the mark survives a restart
        rb = make_rollback(to=DEVICE, signer=signer(key), created=old.begin["created"])
        lu = outcome([(T.model_set, json.dumps(rb).encode())], rb["update_id"])
        assert lu["outcome"] == "refused" and "replayed or out-of-order rollback" in lu["reason"], lu
        assert all(r["model"]["version"] == v2 for r in flowing(col))

    now = datetime.now(timezone.utc)
    fresh = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path / "fresh", public_key=str(pub),
                          max_age_s=3600)
    with Device(fresh, col):
        for created, words in (((now - timedelta(hours=2)).isoformat(), "more than update.max_age_s (3600 s)"),
                               ((now + timedelta(hours=1)).isoformat(), "in the future of this device's clock"),
                               ("2026-01-01T00:00:00", "has no time zone")):
            rb = make_rollback(to=DEVICE, signer=signer(key), created=created)
            lu = outcome([(T.model_set, json.dumps(rb).encode())], rb["update_id"])
            assert lu["outcome"] == "refused" and words in lu["reason"], lu
        # an old command refused for its age did not move the mark: a current one still passes the checks
        rb = make_rollback(to=DEVICE, signer=signer(key))
        assert "no previous model" in outcome([(T.model_set, json.dumps(rb).encode())], rb["update_id"])["reason"]
    col.close()


def _tar_gz(entries) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_bad_updates_are_refused_and_the_old_model_keeps_running(bundles, loop_video, mosquitto, tmp_path):
    v1 = version(bundles["v1"])
    m2 = load_manifest(bundles["v2"])
    archive = pack_bundle(bundles["v2"])
    col = collector(mosquitto.port)
    # The content checks sit behind the signature check: a lab device that accepts unsigned updates
    # (update.allow_unsigned) runs every one of them on the raw messages built here.
    cfg = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, timeout_s=1.5, max_bytes=4_000_000,
                        allow_unsigned=True)

    def copy_v2(name, edit):
        d = tmp_path / name
        shutil.copytree(bundles["v2"], d)
        edit(d)
        return d

    def flip_model_byte(d):
        data = bytearray((d / MODEL_FILE).read_bytes())
        data[len(data) // 3] ^= 0x55
        (d / MODEL_FILE).write_bytes(bytes(data))

    def nine_labels(d):
        m = json.loads((d / "manifest.json").read_text())
        m["labels"] = m["labels"][:9]
        (d / "manifest.json").write_text(json.dumps(m))

    bad_model = copy_v2("bad-model", flip_model_byte)
    bad_labels = copy_v2("bad-labels", nine_labels)
    manifest_bytes = (bundles["v2"] / "manifest.json").read_bytes()
    link = tarfile.TarInfo("model.tflite")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"

    cases = []  # (name, messages, words the reason must hold)
    upd = device_update(archive, m2, chunk_size=16 * 1024)
    upd.chunks[1] = bytes([upd.chunks[1][0] ^ 1]) + upd.chunks[1][1:]
    cases.append(("corrupt chunk", upd, ["sha256", "does not match"]))
    upd = device_update(archive, m2, chunk_size=16 * 1024)
    del upd.chunks[2]
    msgs = upd.messages(T.model_set)  # chunk topics are numbered by position: renumber to leave a hole at 2
    msgs = [msgs[0]] + [(f"{T.model_set}/{upd.update_id}/{i if i < 2 else i + 1}", c)
                        for i, c in enumerate(upd.chunks)] + [msgs[-1]]
    cases.append(("missing chunk", msgs, ["incomplete", "missing: 2", "timeout_s"]))
    cases.append(("short archive", device_update(archive[: len(archive) // 2], m2), ["not a readable tar.gz"]))
    cases.append(("model vs manifest", device_update(pack_bundle(bad_model), load_manifest(bad_model)),
                  ["sha256", "does not match the manifest"]))
    cases.append(("labels vs outputs", device_update(pack_bundle(bad_labels), load_manifest(bad_labels)),
                  ["10 classes", "9 labels"]))
    cases.append(("wrong input shape", device_update(pack_bundle(bundles["wide"]), load_manifest(bundles["wide"])),
                  ["input shape [1, 32, 32, 1]", "[1, 28, 28, 1]", "allow_input_change"]))
    cases.append(("claims another version", device_update(archive, m2.model_copy(update={"version": "7"})),
                  ["version 'update-2'", "claims '7'"]))
    cases.append(("path traversal", device_update(_tar_gz([_file("manifest.json", manifest_bytes),
                                                         _file("../evil.txt", b"x")]), m2), ["unsafe", "'..'"]))
    cases.append(("symlink", device_update(_tar_gz([_file("manifest.json", manifest_bytes), (link, None)]), m2),
                  ["unsafe", "link"]))
    big = device_update(archive, m2, chunk_size=1 << 20)
    big.begin["archive"].update(size=4_000_001, chunks=4)
    cases.append(("oversized", [(T.model_set, json.dumps(big.begin).encode())], ["exceeds update.max_bytes"]))

    with Device(cfg, col):
        for name, upd, words in cases:
            msgs = upd.messages(T.model_set) if hasattr(upd, "messages") else upd
            uid = json.loads(msgs[0][1])["update_id"]
            t0 = time.monotonic()
            send(mosquitto.port, msgs)
            lu = outcome_of(col, uid)["last_update"]
            assert lu["outcome"] == "refused", (name, lu)
            assert all(w in lu["reason"] for w in words), (name, lu["reason"])
            if name == "missing chunk":
                assert time.monotonic() - t0 >= 1.5
            assert all(r["model"]["version"] == v1 for r in flowing(col, n=3)), name
        send(mosquitto.port, [(T.model_set, b"{not json")])
        assert col.wait_for(lambda c: "not JSON" in (states(c)[-1]["last_update"] or {}).get("reason", ""))
        assert states(col)[-1]["active"]["version"] == v1
    refusals = [e for e in validate("event", col.on("/event")) if e["event"] == "model_update_refused"]
    assert len(refusals) == len(cases) + 1
    store = tmp_path / "store"
    leftovers = [p.name for p in store.iterdir() if p.name not in ("active.json", ".staging")]
    assert leftovers == [] and list((store / ".staging").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not (store / "evil.txt").exists()
    col.close()


def test_fleet_topic_reaches_the_device(bundles, loop_video, mosquitto, tmp_path):
    col = collector(mosquitto.port)
    with Device(device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path), col):
        out = publish_bundle(bundles["v2"], mosquitto.address, fleet=True, wait_s=30, sign_key=fleet_key()[0])
        assert [(o.device, o.outcome) for o in out] == [(DEVICE, "applied")], out
        assert outcome_of(col, out[0].update_id)["last_update"]["source"] == "fleet"
        assert all(r["model"]["version"] == version(bundles["v2"]) for r in flowing(col))
    col.close()


def test_persistent_session_gets_an_update_published_while_offline(bundles, loop_video, mosquitto, tmp_path):
    col = collector(mosquitto.port)
    cfg = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, mqtt={"persistent_session": True})
    with Device(cfg, col):
        pass  # the broker now holds the device's session and subscriptions
    out = publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], sign_key=fleet_key()[0])  # offline
    assert [o.outcome for o in out] == ["sent"]
    with Device(cfg, col):
        s = outcome_of(col, out[0].update_id)
        assert s["last_update"]["outcome"] == "applied" and s["active"]["version"] == version(bundles["v2"])
    col.close()


def test_publish_cli_waits_for_the_outcome(bundles, loop_video, mosquitto, tmp_path, capsys):
    col = collector(mosquitto.port)
    keys = tmp_path / "k" / "ops"
    cli = [sys.executable, "-m", "train.publish"]
    r = subprocess.run(cli + ["keygen", str(keys)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(f"{keys}.key").st_mode) == 0o600 and Path(f"{keys}.pub").is_file()
    assert key_id(load_public_key(f"{keys}.pub")) in r.stdout
    cfg = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, public_key=f"{keys}.pub")
    with Device(cfg, col):
        r = subprocess.run(cli + ["--bundle", str(bundles["v2"]), "--device", DEVICE, "--broker", mosquitto.address,
                                  "--sign-key", f"{keys}.key", "--chunk-size", "32k", "--wait", "30"],
                           cwd=REPO, capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith(f"{DEVICE}: applied (version {version(bundles['v2'])}")
        # a refusal and a device that does not exist: exit 15 (DEVICE_REFUSED), both named
        code = publish_main(["--bundle", str(bundles["wide"]), "--device", DEVICE, "ghost", "--broker",
                             mosquitto.address, "--sign-key", f"{keys}.key", "--wait", "3"])
        out = capsys.readouterr().out
        assert code == ExitCode.DEVICE_REFUSED == 15
        assert f"{DEVICE}: refused: input shape" in out and "ghost: no answer" in out
        code = publish_main(["rollback", "--device", DEVICE, "--broker", mosquitto.address, "--sign-key",
                             f"{keys}.key", "--wait", "20", "--json"])
        assert code == 0
        assert json.loads(capsys.readouterr().out)[0]["outcome"] == "rolled_back"
    col.close()
    r = subprocess.run([sys.executable, "-c", "import sys, train.publish; print('tensorflow' in sys.modules)"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", "train.publish must run without TensorFlow"


def test_publish_bad_input_exits_2_naming_the_path(bundles, tmp_path, capsys):
    def run(*args):
        code = publish_main([str(a) for a in args])
        return code, capsys.readouterr().err

    code, err = run("--bundle", tmp_path / "nope", "--device", DEVICE, "--broker", "127.0.0.1:1")
    assert code == 2 and str(tmp_path / "nope") in err and "not found" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"name": "x"}')
    code, err = run("--bundle", bad, "--device", DEVICE, "--broker", "127.0.0.1:1")
    assert code == 2 and "manifest" in err and str(bad) in err
    code, err = run("--bundle", bundles["v2"], "--device", DEVICE, "--broker", "127.0.0.1:1",
                    "--sign-key", tmp_path / "missing.key")
    assert code == 2 and str(tmp_path / "missing.key") in err
    code, err = run("--bundle", bundles["v2"], "--broker", "127.0.0.1:1")
    assert code == 2 and "--device" in err
    code, err = run("--bundle", bundles["v2"], "--device", "fleet", "--broker", "127.0.0.1:1")
    assert code == 2 and "--fleet" in err
    code, err = run("--bundle", bundles["v2"], "--device", DEVICE, "--broker", "127.0.0.1:1", "--chunk-size", "lots")
    assert code == 2 and "lots" in err
    long_version = tmp_path / "long-version"
    shutil.copytree(bundles["v2"], long_version)
    m = json.loads((long_version / "manifest.json").read_text())
    m["version"] = "v" * 300  # a valid manifest, but too long for the update's begin message
    (long_version / "manifest.json").write_text(json.dumps(m))
    code, err = run("--bundle", long_version, "--device", DEVICE, "--broker", "127.0.0.1:1")
    assert code == 2 and "version" in err and str(long_version) in err, err
    code, err = run("--bundle", bundles["v2"], "--device", DEVICE, "--broker", "127.0.0.1:1", "--connect-timeout", "1")
    assert code == ExitCode.BROKER_UNREACHABLE == 12 and "127.0.0.1:1" in err


# -- units --------------------------------------------------------------------------------------
def test_the_device_package_holds_no_private_key_code():
    """Keys are made and commands signed on the host (train.loop.keys); a device only verifies."""
    import sdk.update as su

    assert not {"generate_keypair", "load_private_key", "sign"} & set(dir(su))
    for path in (REPO / "sdk").rglob("*.py"):
        text = path.read_text()
        assert "PrivateKey" not in text and "private_bytes" not in text, path


def test_publish_help_lists_its_exit_codes(capsys):
    from sdk.errors import EXIT_CODES
    from train.publish import KEYGEN_EXIT_CODES, PUBLISH_EXIT_CODES

    for argv, codes in ((["--help"], PUBLISH_EXIT_CODES), (["rollback", "--help"], PUBLISH_EXIT_CODES),
                        (["keygen", "--help"], KEYGEN_EXIT_CODES)):
        assert publish_main(argv) == 0
        out = capsys.readouterr().out
        assert all(f"{int(c):>3}  {EXIT_CODES[c]}" in out for c in codes), out
    assert {ExitCode.BROKER_UNREACHABLE, ExitCode.DEVICE_REFUSED} <= set(PUBLISH_EXIT_CODES)


def test_pack_bundle_is_deterministic(bundles, tmp_path):
    a = pack_bundle(bundles["v2"])
    copy = tmp_path / "copy"
    shutil.copytree(bundles["v2"], copy)
    os.utime(copy / MODEL_FILE, (1, 1))
    assert pack_bundle(copy) == a
    assert a[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    with tarfile.open(fileobj=io.BytesIO(a), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(p.name for p in bundles["v2"].iterdir())
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.isfile() for m in members)
    with pytest.raises(BundleError, match="no manifest.json"):
        pack_bundle(tmp_path)


def test_signature_covers_the_claims_and_key_formats(bundles, tmp_path):
    key_path, pub_path, kid = generate_keypair(tmp_path / "k")
    key, pub = load_private_key(key_path), load_public_key(pub_path)
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    import hashlib

    assert kid == key_id(pub) == hashlib.sha256(raw).hexdigest()[:16]
    (tmp_path / "raw.pub").write_text(base64.b64encode(raw).decode() + "\n")
    assert key_id(load_public_key(tmp_path / "raw.pub")) == kid
    upd = device_update(pack_bundle(bundles["v2"]), load_manifest(bundles["v2"]), signer=signer(key))
    verify(upd.begin, pub)
    for path, value in ((("to",), "dev2"), (("version",), "x"), (("name",), "x"), (("target",), "coral"), (("update_id",), "ab" * 8),
                        (("archive", "sha256"), "0" * 64), (("archive", "size"), 1), (("manifest_sha256",), "1" * 64)):
        msg = json.loads(json.dumps(upd.begin))
        (msg[path[0]] if len(path) == 2 else msg)[path[-1]] = value
        with pytest.raises(UpdateRefused, match="bad signature"):
            verify(msg, pub)
    rb = make_rollback(to=DEVICE, signer=signer(key))
    verify(rb, pub)
    with pytest.raises(UpdateRefused, match="bad signature"):
        verify({**rb, "to": "fleet"}, pub)
    with pytest.raises(UpdateRefused, match="unsigned"):
        verify(make_rollback(to=DEVICE), pub)
    other = upd.addressed_to("fleet", signer(key))  # another target: same id, shared chunks, its own signature
    assert other.begin["to"] == "fleet" and other.chunks is upd.chunks and other.update_id == upd.update_id
    verify(other.begin, pub)
    assert {k: v for k, v in other.begin.items() if k not in ("to", "signature")} == \
        {k: v for k, v in upd.begin.items() if k not in ("to", "signature")}
    for m in (upd.begin, upd.end, rb, make_rollback(to="fleet"), other.begin):
        jsonschema.validate(m, load_schema("model-update"))
    for m in (upd.begin, rb):  # 'to' is required
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({k: v for k, v in m.items() if k != "to"}, load_schema("model-update"))
    with pytest.raises(ValueError, match="invalid target"):
        make_rollback(to="a/b")
    with pytest.raises(ValueError, match="not found"):
        load_public_key(tmp_path / "none.pub")
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(ValueError, match="junk.pub"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(ValueError, match="exists"):
        generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    signed = sign({"a": 1}, key)
    assert signed["signature"]["key_id"] == kid and len(base64.b64decode(signed["signature"]["value"])) == 64


@pytest.mark.parametrize("entry,words", [
    (lambda: _file("/abs.txt", b"x"), "absolute"),
    (lambda: _file("a/../../x", b"x"), "'..'"),
    (lambda: (lambda i: (setattr(i, "type", tarfile.LNKTYPE) or setattr(i, "linkname", "manifest.json") or i, None))(
        tarfile.TarInfo("hard")), "link"),
    (lambda: (lambda i: (setattr(i, "type", tarfile.CHRTYPE) or i, None))(tarfile.TarInfo("dev")), "device"),
])
def test_safe_extract_refuses_unsafe_entries(tmp_path, entry, words):
    arc = tmp_path / "a.tar.gz"
    arc.write_bytes(_tar_gz([_file("manifest.json", b"{}"), entry()]))
    with pytest.raises(UpdateRefused, match="unsafe"):
        safe_extract(arc, tmp_path / "out", 10_000)
    assert not (tmp_path / "out").exists()


def test_safe_extract_bounds_the_expanded_size(tmp_path):
    arc = tmp_path / "a.tar.gz"
    arc.write_bytes(_tar_gz([_file("zeros", bytes(200_000))]))
    assert arc.stat().st_size < 2000
    with pytest.raises(UpdateRefused, match="expands to more than"):
        safe_extract(arc, tmp_path / "out", 100_000)


def test_safe_extract_stops_at_the_entry_limit(tmp_path, monkeypatch):
    import sdk.update as su

    arc = tmp_path / "many.tar.gz"
    arc.write_bytes(_tar_gz([_file(f"f{i}", b"") for i in range(su.MAX_MEMBERS + 50)]))
    read = []
    orig_next = tarfile.TarFile.next

    def counting_next(self):
        m = orig_next(self)
        read.append(m)
        return m

    monkeypatch.setattr(tarfile.TarFile, "next", counting_next)
    with pytest.raises(UpdateRefused, match=f"more than {su.MAX_MEMBERS} entries"):
        safe_extract(arc, tmp_path / "out", 10_000_000)
    assert len(read) <= su.MAX_MEMBERS + 2  # stopped reading right after the limit
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    ok = tmp_path / "ok.tar.gz"  # exactly at the limit is fine
    ok.write_bytes(_tar_gz([_file(f"f{i}", b"x") for i in range(su.MAX_MEMBERS)]))
    safe_extract(ok, tmp_path / "ok", 10_000)
    assert len(list((tmp_path / "ok").iterdir())) == su.MAX_MEMBERS


def test_safe_extract_refuses_a_single_oversized_member(tmp_path):
    arc = tmp_path / "a.tar.gz"
    arc.write_bytes(_tar_gz([_file("zeros", bytes(300_000)), _file("b", b"x")]))
    with pytest.raises(UpdateRefused, match="expands to more than"):
        safe_extract(arc, tmp_path / "out", 100_000)


def test_chunk_topics_parse_strictly():
    base = T.model_set
    assert parse_model_chunk(base, f"{base}/ab12cd34/7") == ("ab12cd34", 7)
    assert parse_model_chunk(base, f"{base}/ab12cd34/123456789") == ("ab12cd34", 123456789)
    for bad in ("ab12cd34/\u00b2", "ab12cd34/\u0663", "ab12cd34/1234567890", "ab12cd34/-1", "ab12cd34/ 1",
                "ab12cd34/1\n", "ab12cd34\n/1", "AB12CD34/1", "ab12cd34/1/2", "ab12cd34/"):
        assert parse_model_chunk(base, f"{base}/{bad}") is None, bad


def test_update_config_section():
    c = Config(device_id="d")
    assert c.update.enabled and c.update.fleet and c.update.public_key is None and c.update.keep >= 2
    assert not c.mqtt.persistent_session
    with pytest.raises(ConfigError, match="update.max_byte"):
        config_from_dict({"device_id": "d", "update": {"max_byte": 1}})
    with pytest.raises(ConfigError, match="reserved"):
        config_from_dict({"device_id": "fleet"})


def test_public_key_missing_is_a_config_error(sdk_bundle, loop_video, tmp_path):
    cfg = Config(device_id=DEVICE, source=f"video:{loop_video}", model=str(sdk_bundle),
                 mqtt={"broker": "127.0.0.1:1", "outbox_path": ":memory:"}, update={"public_key": str(tmp_path / "k.pub")})
    with pytest.raises(ConfigError, match="update.public_key.*k.pub"):
        sdk.run(cfg)


def test_outcome_line():
    assert DeviceOutcome("d", "refused", "bad").line() == "d: refused: bad"
    assert not DeviceOutcome("d", "no_answer", "x").ok and DeviceOutcome("d", "applied").ok


def test_store_keeps_the_active_and_previous_bundles_and_prunes_older(bundles, tmp_path):
    store = ModelStore(tmp_path / "store", keep=2)
    m = load_manifest(bundles["v2"])
    m1 = load_manifest(bundles["v1"])
    base = {"name": m1.name, "version": m1.version, "sha256": m1.sha256, "update_id": None, "dir": None}
    current = base
    for i in range(4):
        src = tmp_path / f"in{i}"
        shutil.copytree(bundles["v2"], src)
        name = store.install(src, m, f"{i:08x}")
        ref = {**current, "name": m.name, "version": f"v{i}", "update_id": f"{i:08x}", "dir": name}
        store.activate(ref, current)
        current = ref
    store.save()
    dirs = sorted(p.name for p in store.root.iterdir() if p.is_dir())
    assert dirs == sorted([store.active["dir"], store.previous["dir"]]) and store.active["version"] == "v3"
    assert store.state["base"]["version"] == m1.version
    again = ModelStore(tmp_path / "store")
    assert again.active == store.active and again.startup_model(bundles["v1"]) == store.root / store.active["dir"]
    assert again.startup_model(bundles["v2"]) == bundles["v2"]  # another configured model than the base: it wins
    assert again.active is None


def _undeletable(folder: Path) -> Callable[[], None]:
    """Make the files in ``folder`` impossible to delete (chattr +i as root, a read-only folder
    otherwise); returns the undo."""
    if os.geteuid() == 0:
        files = [str(p) for p in folder.iterdir()]
        if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system")
        return lambda: subprocess.run(["chattr", "-i", *files], check=True)
    folder.chmod(0o500)
    return lambda: folder.chmod(0o700)


def test_a_model_folder_that_cannot_be_deleted_is_logged_not_reported_pruned(bundles, tmp_path, caplog):
    store = ModelStore(tmp_path / "store", keep=2)
    m = load_manifest(bundles["v2"])
    current = {"name": m.name, "version": "base", "sha256": m.sha256, "update_id": None, "dir": None}
    names = []
    for i in range(2):
        src = tmp_path / f"in{i}"
        shutil.copytree(bundles["v2"], src)
        names.append(store.install(src, m, f"{i:08x}"))
        ref = {**current, "version": f"v{i}", "update_id": f"{i:08x}", "dir": names[-1]}
        store.activate(ref, current)
        current = ref
    undo = _undeletable(store.root / names[0])
    try:
        with caplog.at_level("INFO", logger="sdk.update"):
            for i in (2, 3):  # two more: names[0] (neither active nor previous) must go, but cannot
                src = tmp_path / f"in{i}"
                shutil.copytree(bundles["v2"], src)
                ref = {**current, "version": f"v{i}", "update_id": f"{i:08x}",
                       "dir": store.install(src, m, f"{i:08x}")}
                store.activate(ref, current)
                current = ref
        logs = [r.getMessage() for r in caplog.records]
        assert any(f"could not delete the old model {store.root / names[0]}" in t
                   and ("Operation not permitted" in t or "Permission denied" in t) for t in logs), logs
        assert not any(f"pruned old model {names[0]}" in t for t in logs), logs
        assert names[0] in store.state["installed"] and (store.root / names[0]).is_dir()  # still listed: tried again
        assert any(f"pruned old model {names[1]}" in t for t in logs)  # the next one went instead
    finally:
        undo()
    store.prune()  # deletable again: the next prune removes it
    assert names[0] not in store.state["installed"] and not (store.root / names[0]).exists()


def test_subscriptions_are_renewed_after_a_broker_restart(tmp_path):
    broker = Broker(tmp_path / "b").start()
    got = []
    try:
        pub = MqttPublisher("127.0.0.1", broker.port, "sub-test", reconnect_min_s=0.1, reconnect_max_s=0.3)
        pub.subscribe("edge/v1/dev1/model/set/#", 1, lambda t, p: got.append((t, p)))
        with pub:
            assert pub.wait_connected(10)
            broker.kill()
            broker.start()  # no persistence: the subscription must be made again by the client
            end = time.monotonic() + 10
            while time.monotonic() < end and not got:
                send(broker.port, [("edge/v1/dev1/model/set", b"x"), ("edge/v1/dev1/model/set/ab12cd34/0", b"y")])
                time.sleep(0.2)
            time.sleep(0.2)
        assert ("edge/v1/dev1/model/set", b"x") in got and ("edge/v1/dev1/model/set/ab12cd34/0", b"y") in got
        assert pub.connects >= 2
    finally:
        broker.stop()


def test_store_start_up_removes_leftovers_but_not_the_active_or_previous_bundle(bundles, tmp_path):
    store = ModelStore(tmp_path / "store", keep=3)
    m = load_manifest(bundles["v2"])
    m1 = load_manifest(bundles["v1"])
    current = {"name": m1.name, "version": m1.version, "sha256": m1.sha256, "update_id": None, "dir": None}
    for i in range(2):
        src = tmp_path / f"in{i}"
        shutil.copytree(bundles["v2"], src)
        ref = {**current, "version": f"v{i}", "update_id": f"{i:08x}", "dir": store.install(src, m, f"{i:08x}")}
        store.activate(ref, current)
        current = ref
    store.save()
    active, previous = store.active["dir"], store.previous["dir"]
    root = store.root
    (store.staging() / "0123abcd.tar.gz.part").write_bytes(b"half")
    (root / ".incoming-0123abcd").mkdir()
    (root / ".incoming-0123abcd" / "model.tflite").write_bytes(b"x")
    shutil.copytree(bundles["v2"], root / "update-2-deadbeef0000")  # installed, then forgotten (a crash)
    (root / "notes").mkdir()  # not a store folder: left alone
    # the active and previous folders are kept even when 'installed' lost them
    state = json.loads((root / "active.json").read_text())
    state["installed"] = []
    (root / "active.json").write_text(json.dumps(state))

    again = ModelStore(root, keep=3)
    assert sorted(p.name for p in root.iterdir()) == sorted([".staging", "active.json", "notes", active, previous])
    assert list((root / ".staging").iterdir()) == []
    assert again.active["dir"] == active and (root / active / MODEL_FILE).is_file()

    (root / "v9-0123456789ab").mkdir()
    (root / "active.json").write_text("{broken")  # unreadable: no bundle folder is removed
    ModelStore(root, keep=3)
    assert {active, previous, "v9-0123456789ab"} <= {p.name for p in root.iterdir()}


# -- secure by default -----------------------------------------------------------------------------
def test_shipped_configs_apply_only_signed_updates():
    for path in sorted((REPO / "firmware_configs").glob("*.yaml")):
        u = config_from_dict(__import__("yaml").safe_load(path.read_text()), str(path)).update
        assert u.enabled and u.public_key == "/etc/edgeclf/update.pub" and not u.allow_unsigned, path


def test_without_a_key_every_update_is_refused_and_the_model_keeps_running(bundles, loop_video, mosquitto,
                                                                         tmp_path, caplog):
    """The default device (no update.public_key, allow_unsigned false) refuses unsigned and signed
    updates alike, says why on model/state, and warns at start that updates will be refused."""
    v1 = version(bundles["v1"])
    col = collector(mosquitto.port)
    cfg = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, public_key=None)
    assert cfg.update.public_key is None and not cfg.update.allow_unsigned
    with caplog.at_level("WARNING", logger="sdk.update"), Device(cfg, col):
        assert any("every update" in r.getMessage() and "will be refused" in r.getMessage() for r in caplog.records)
        for key in (None, fleet_key()[0]):
            out = publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], wait_s=20, sign_key=key)
            assert [o.outcome for o in out] == ["refused"], out
            assert "no update.public_key" in out[0].reason and "keygen" in out[0].reason, out[0].reason
            state = outcome_of(col, out[0].update_id)
            assert state["active"]["version"] == v1 and state["last_update"]["outcome"] == "refused"
            assert all(r["model"]["version"] == v1 for r in flowing(col))
        back = rollback(mosquitto.address, devices=[DEVICE], wait_s=20)
        assert back[0].outcome == "refused" and "no update.public_key" in back[0].reason
    col.close()


def test_allow_unsigned_applies_unsigned_updates_with_a_warning(bundles, loop_video, mosquitto, tmp_path, caplog):
    col = collector(mosquitto.port)
    cfg = device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path, allow_unsigned=True)
    assert cfg.update.public_key is None
    with caplog.at_level("WARNING", logger="sdk.update"), Device(cfg, col):
        assert any("UNSIGNED updates" in r.getMessage() for r in caplog.records)
        out = publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], wait_s=30)
        assert [o.outcome for o in out] == ["applied"], out
    col.close()
    with pytest.raises(ConfigError, match="allow_unsigned: true contradicts public_key"):
        config_from_dict({"update": {"allow_unsigned": True, "public_key": "/etc/edgeclf/update.pub"}})


# -- the smoke test, over MQTT ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broken_bundles(bundles, tmp_path_factory) -> dict[str, Path]:
    """Bundles whose sha256 and (when sent) signature are valid, but whose model does not work:
    one that does not load, one whose outputs are NaN, one whose 'softmax' outputs do not sum to 1."""
    from sdk_bundle_fixture import write_float_bundle
    from train._tf import keras, tf

    root = tmp_path_factory.mktemp("broken")
    unloadable = root / "unloadable"
    shutil.copytree(bundles["v2"], unloadable)
    junk = b"TFL3" + bytes(range(256)) * 64  # not a flatbuffer model
    (unloadable / MODEL_FILE).write_bytes(junk)
    m = load_manifest(unloadable)
    (unloadable / "manifest.json").write_text(m.model_copy(update={
        "version": "unloadable", "sha256": hashlib.sha256(junk).hexdigest(), "size_bytes": len(junk)}).model_dump_json())

    def net(last):
        return keras.Sequential([keras.layers.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255),
                                 keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax"), last])

    # sqrt(p - 2) of a probability p: NaN for every class
    nan = write_float_bundle(net(keras.layers.Lambda(lambda p: tf.sqrt(p - 2.0))), bundles["v2"], root / "nan",
                             version="nan")
    # probabilities plus 1: finite, one per label, but summing to 11, not a softmax
    shifted = write_float_bundle(net(keras.layers.Lambda(lambda p: p + 1.0)), bundles["v2"], root / "shifted",
                                 version="not-softmax")
    return {"unloadable": unloadable, "nan": nan, "not_softmax": shifted}


def test_updates_that_fail_the_smoke_test_are_refused_over_mqtt(bundles, broken_bundles, loop_video, mosquitto,
                                                               tmp_path):
    v1 = version(bundles["v1"])
    col = collector(mosquitto.port)
    cases = {"unloadable": ["does not load here"], "nan": ["smoke test", "not finite"],
             "not_softmax": ["smoke test", "softmax outputs sum to 11", "not 1"]}
    with Device(device_config(bundles["v1"], loop_video, mosquitto.address, tmp_path), col):
        for name, words in cases.items():
            out = publish_bundle(broken_bundles[name], mosquitto.address, devices=[DEVICE], wait_s=30,
                                 sign_key=fleet_key()[0])
            assert [o.outcome for o in out] == ["refused"], (name, out)
            state = outcome_of(col, out[0].update_id)
            assert state["last_update"]["outcome"] == "refused" and state["active"]["version"] == v1, (name, state)
            assert all(w in state["last_update"]["reason"] for w in words), (name, state["last_update"]["reason"])
            assert all(r["model"]["version"] == v1 for r in flowing(col)), name  # the old model keeps classifying
    events = [e for e in validate("event", col.on(f"{DEVICE}/event")) if e["event"] == "model_update_refused"]
    assert len(events) == len(cases)
    leftovers = [p.name for p in (tmp_path / "store").iterdir() if p.name not in ("active.json", ".staging")]
    assert leftovers == []  # nothing of a refused bundle stays in the store
    col.close()


# -- through the broker a fleet runs: TLS, passwords, the shipped ACL ---------------------------------
def test_signed_update_through_tls_passwords_and_the_shipped_acl(bundles, loop_video, tmp_path, monkeypatch):
    """mosquitto with examples/mosquitto/mosquitto.conf and acl (the documented ones): the device
    (user dev1) reads its own model/set and the fleet topic and nothing of dev2's; ops (train.publish)
    rolls out a signed update over TLS and sees the outcome; results then carry the new version."""
    from mqtt_fixtures import USERS, shipped_broker

    broker, pki = shipped_broker(tmp_path / "broker")
    broker.start()
    v2 = version(bundles["v2"])
    tls = TlsSettings(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    creds = {"pki": pki}
    reader = Collector(broker.port, ("edge/#",), **creds, username="reader", password=USERS["reader"])
    # dev1's credentials, trying to read everything of dev2 (and every device's results)
    snoop = Collector(broker.port, ("edge/v1/dev2/#", "edge/v1/+/result", "edge/v1/+/model/set/#"), **creds,
                      username="dev1", password=USERS["dev1"])
    assert reader.wait_subscribed() and snoop.wait_subscribed(), (reader.refused, snoop.refused)
    monkeypatch.setenv("EDGECLF_MQTT_USERNAME", "dev1")
    monkeypatch.setenv("EDGECLF_MQTT_PASSWORD", USERS["dev1"])
    cfg = device_config(bundles["v1"], loop_video, f"localhost:{broker.port}", tmp_path,
                        mqtt={"tls": {"enabled": True, "ca_certs": str(pki.ca), "certfile": str(pki.client_cert),
                                      "keyfile": str(pki.client_key)}})
    ops = {"tls": tls, "username": "ops", "password": USERS["ops"], "sign_key": fleet_key()[0]}
    try:
        with Device(cfg, reader):
            # an update for dev2 passes through the broker; dev1's user must not see any of it
            sent = publish_bundle(bundles["v2"], broker.address, devices=["dev2"], **ops)
            assert [o.outcome for o in sent] == ["sent"]
            out = publish_bundle(bundles["v2"], f"localhost:{broker.port}", devices=[DEVICE], wait_s=30, **ops)
            assert [(o.device, o.outcome) for o in out] == [(DEVICE, "applied")], out
            assert all(r["model"]["version"] == v2 for r in flowing(reader))
            fleet = publish_bundle(bundles["v1"], f"localhost:{broker.port}", fleet=True, wait_s=30, **ops)
            assert [(o.device, o.outcome) for o in fleet] == [(DEVICE, "applied")], fleet  # the fleet topic too
        time.sleep(0.5)
        with snoop.lock:
            seen = {t for t, _, _ in snoop.messages}
        # dev1 read its own and the fleet's model updates, and nothing of dev2 (nor any results)
        assert {t.split("/")[2] for t in seen} == {DEVICE, "fleet"} and all("/model/set" in t for t in seen), seen
        # dev1 may not write another device's topics either (the broker drops it and logs it)
        with MqttPublisher("localhost", broker.port, "dev1-forger", tls=tls, username="dev1",
                           password=USERS["dev1"]) as forger:
            assert forger.wait_connected(10)
            forger.publish("edge/v1/dev2/model/set", b"{}")
            assert forger.flush(10)
        assert reader.wait_for(lambda c: "denied publish" in broker.log_text().lower(), 10)
        assert not any(t == "edge/v1/dev2/model/set" and p == b"{}" for t, p, _ in reader.messages)
    finally:
        reader.close()
        snoop.close()
        broker.stop()
