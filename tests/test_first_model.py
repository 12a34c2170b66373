"""The first model of a device that started without one (``model: null``, capture mode): it arrives
as a signed update, like any other, and the device starts classifying.

Real parts: a looping MJPG video of real MNIST digits decoded by OpenCV in ``sdk.run`` (in a thread),
the real INT8 LiteRT bundle of ``sdk_bundle_fixture`` as the first model, published by the host's
real ``publish_bundle`` (signed with a key from ``train.loop.keys``) through a real mosquitto; every
payload validated against the shipped schemas. The video has 120 distinct digits at 10 fps and the
device captures every 0.7 s of it (7 frames, prime to 120), so no capture is a duplicate of an
earlier one within a few loops.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from contract import validate
from mqtt_fixtures import Collector, mosquitto  # noqa: F401  (fixture)
from sdk.bundle import load_manifest
from sdk.config import Config
from sdk.messages import model_info
from sdk.update import ModelStore, model_ref
from sdk_bundle_fixture import sdk_bundle  # noqa: F401  (fixture)
from test_model_update import (
    Device,
    bundles,  # noqa: F401  (fixture: v1 is sdk_bundle, v2 other weights, same input)
    collector,
)
from train.data.videos import write_digit_video
from train.loop.keys import generate_keypair
from train.loop.publish import publish_bundle, rollback

DEVICE = "fresh1"
EVERY_S = 0.7


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    """The fleet's key pair and a rogue one (``.key`` paths for the host, ``.pub`` for the device)."""
    d = tmp_path_factory.mktemp("keys")
    fleet_key, fleet_pub, fleet_id = generate_keypair(d / "fleet")
    rogue_key, _, _ = generate_keypair(d / "rogue")
    return {"key": fleet_key, "pub": fleet_pub, "id": fleet_id, "rogue": rogue_key}


@pytest.fixture(scope="module")
def video(tmp_path_factory, distinct_digits):
    x, _ = distinct_digits
    return write_digit_video(tmp_path_factory.mktemp("first-model") / "digits.avi", x, seed=7)


def device_config(video, broker, tmp_path, keys) -> Config:
    """A device with no model, capturing every 0.7 s of the video, taking signed updates."""
    return Config(device_id=DEVICE, source=f"video:{video}", loop=True, fps_cap=25, model=None,
                  mqtt={"broker": broker, "outbox_path": str(tmp_path / "outbox.sqlite"), "reconnect_min_s": 0.2,
                        "reconnect_max_s": 1.0},
                  sampling={"enabled": False, "capture_every_s": EVERY_S}, metrics_interval_s=0.5,
                  update={"store_dir": str(tmp_path / "store"), "public_key": str(keys["pub"])})


def results(col) -> list[dict]:
    return validate("result", col.on(f"{DEVICE}/result"))


def samples(col) -> list[dict]:
    return validate("sample", col.on(f"{DEVICE}/sample"))


def states(col) -> list[dict]:
    return validate("model-state", [p for p in col.on(f"{DEVICE}/model/state") if p])


def capturing(col, n: int = 2) -> bool:
    """At least ``n`` captures so far."""
    return len(col.on(f"{DEVICE}/sample")) >= n


def _fresh(col, kind: str, n: int, timeout: float, what: str) -> list[dict]:
    """The next ``n`` ``kind`` messages (result, sample) of frames read from now on, schema-checked."""
    k, t0 = len(col.on(f"{DEVICE}/{kind}")), time.time()

    def fresh(c) -> list[bytes]:
        return [p for p in c.on(f"{DEVICE}/{kind}")[k:] if json.loads(p)["ts"] > t0]

    assert col.wait_for(lambda c: len(fresh(c)) >= n, timeout), what
    return validate(kind, fresh(col)[:n])


def more_captures(col, n: int = 2, timeout: float = 15) -> list[dict]:
    """The next ``n`` captures made from now on (the device keeps capturing)."""
    return _fresh(col, "sample", n, timeout, "captures stopped")


def flowing(col, n: int = 5, timeout: float = 15) -> list[dict]:
    """The first ``n`` results of frames read from now on (the device keeps classifying)."""
    return _fresh(col, "result", n, timeout, "results stopped flowing")


def modelless_ready(col) -> bool:
    """Capturing (model null) and the updater's model/state out: nothing active, nothing to roll back to."""
    return capturing(col) and any(s["active"] is None and s["previous"] is None for s in states(col))


def retained_state(port: int) -> dict:
    """``model/state`` as a subscriber that comes later gets it: the retained message."""
    late = Collector(port, (f"edge/v1/{DEVICE}/model/state",))
    try:
        assert late.wait_subscribed()
        assert late.wait_for(lambda c: bool(c.messages), 10), "no retained model/state"
        with late.lock:
            topic, payload, retain = late.messages[0]
        assert retain, "model/state is not retained"
        return validate("model-state", [payload])[0]
    finally:
        late.close()


def bootstrap(video, mosquitto, tmp_path, keys, bundle) -> tuple[Collector, Config]:  # noqa: F811
    """A model-less device that got ``bundle`` as its first model (then stopped)."""
    col = collector(mosquitto.port)
    cfg = device_config(video, mosquitto.address, tmp_path, keys)
    with Device(cfg, col, modelless_ready):
        out = publish_bundle(bundle, mosquitto.address, devices=[DEVICE], wait_s=30, sign_key=keys["key"])
        assert [o.outcome for o in out] == ["applied"], out
        flowing(col, n=3)
    return col, cfg


# -- tests ----------------------------------------------------------------------------------------
def test_first_model_arrives_signed_and_the_device_classifies_and_keeps_capturing(
        sdk_bundle, video, mosquitto, tmp_path, keys):  # noqa: F811
    m = load_manifest(sdk_bundle)
    info = model_info(m)
    col = collector(mosquitto.port)
    dev = Device(device_config(video, mosquitto.address, tmp_path, keys), col, modelless_ready)
    with dev:
        assert not results(col)
        before = samples(col)
        assert all(s["model"] is None and s["top_k"] == [] and s.get("model_input") is None for s in before)
        out = publish_bundle(sdk_bundle, mosquitto.address, devices=[DEVICE], chunk_size="16k", wait_s=30,
                             sign_key=keys["key"])
        assert [(o.device, o.outcome, o.version) for o in out] == [(DEVICE, "applied", m.version)], out
        uid = out[0].update_id
        assert all(r["model"] == info for r in flowing(col, n=10))
        # captures go on, now with what the model saw and its scores
        for s in more_captures(col, n=3):
            assert s["model"] == info and "capture" in s["reasons"]
            assert s["model_input"] is not None and s["model_input"]["width"] == 28
            assert s["top_k"] and len(s["scores"]) == len(m.labels)
        assert col.wait_for(lambda c: validate("metrics", c.on(f"{DEVICE}/metrics"))[-1]["model"] == info)
        # model/state (retained): the new model active, nothing to roll back to
        last = retained_state(mosquitto.port)
        assert last["active"] == {"name": m.name, "version": m.version, "sha256": m.sha256, "update_id": uid}
        assert last["previous"] is None
        assert last["last_update"]["update_id"] == uid and last["last_update"]["outcome"] == "applied"
        events = validate("event", col.on(f"{DEVICE}/event"))
        applied = [e for e in events if e["event"] == "model_updated"]
        assert len(applied) == 1 and applied[0]["detail"]["from"] is None
        assert applied[0]["detail"]["to"]["update_id"] == uid
    stats = dev.stats
    assert stats.ended_by == "stopped" and stats.extra["model_swaps"] == 1 and stats.published > 10
    assert col.wait_for(lambda c: len(c.on(f"{DEVICE}/result")) >= stats.published)
    res = sorted(results(col), key=lambda r: r["seq"])
    assert [r["seq"] for r in res] == list(range(stats.published)), "results are not numbered from 0 on"
    first = res[0]["frame_id"]
    assert first > 0 and [r["frame_id"] for r in res] == list(range(first, first + len(res))), \
        "a frame after the swap was not classified"
    assert res[-1]["frame_id"] == stats.frames - 1, "a frame was neither captured model-less nor classified"
    assert {r["model"]["version"] for r in res} == {m.version}
    # every capture made before the first result has no model; every one from that frame on has it
    caps = samples(col)
    assert [s["model"] is None for s in caps] == [s["frame_id"] < first for s in caps]
    store = json.loads((tmp_path / "store" / "active.json").read_text())
    assert store["active"]["update_id"] == uid and store["previous"] is None and store["base"] is None
    assert (tmp_path / "store" / store["active"]["dir"] / "manifest.json").is_file()
    col.close()


def test_unsigned_or_wrongly_signed_first_model_is_refused_and_capture_goes_on(
        sdk_bundle, video, mosquitto, tmp_path, keys):  # noqa: F811
    col = collector(mosquitto.port)
    dev = Device(device_config(video, mosquitto.address, tmp_path, keys), col, modelless_ready)
    with dev:
        for sign_key, words in ((None, ("unsigned", keys["id"])), (keys["rogue"], ("trusts key", keys["id"]))):
            out = publish_bundle(sdk_bundle, mosquitto.address, devices=[DEVICE], sign_key=sign_key, wait_s=20)
            assert len(out) == 1 and out[0].outcome == "refused", out
            assert all(w in out[0].reason for w in words), out[0].reason
            assert all(s["model"] is None and s["top_k"] == [] for s in more_captures(col))
            last = retained_state(mosquitto.port)
            assert last["active"] is None and last["previous"] is None
            assert last["last_update"]["update_id"] == out[0].update_id
            assert last["last_update"]["outcome"] == "refused"
        # nor is there anything to roll back to
        back = rollback(mosquitto.address, devices=[DEVICE], sign_key=keys["key"], wait_s=20)
        assert back[0].outcome == "refused" and "no previous model to roll back to" in back[0].reason, back
        more_captures(col)
    assert dev.stats.ended_by == "stopped" and dev.stats.published == 0 and "model_swaps" not in dev.stats.extra
    assert not results(col)
    assert json.loads((tmp_path / "store" / "active.json").read_text())["active"] is None
    col.close()


def test_after_a_restart_with_model_null_the_installed_model_runs_from_the_first_frame(
        sdk_bundle, video, mosquitto, tmp_path, keys):  # noqa: F811
    m = load_manifest(sdk_bundle)
    col, cfg = bootstrap(video, mosquitto, tmp_path, keys, sdk_bundle)
    assert cfg.model is None
    col.messages.clear()
    with Device(cfg, col, lambda c: len(c.on(f"{DEVICE}/result")) >= 5 and bool(states(c))):
        res = results(col)
        assert res[0]["frame_id"] == 0 and res[0]["seq"] == 0 and res[0]["model"] == model_info(m)
        s0 = states(col)[0]
        assert s0["active"]["sha256"] == m.sha256 and s0["active"]["update_id"] is not None
        assert s0["previous"] is None
        caps = more_captures(col, n=2)
        assert all(s["model"] == model_info(m) and s["model_input"] is not None for s in caps)
    started = [e for e in validate("event", col.on(f"{DEVICE}/event")) if e["event"] == "started"]
    assert started and started[-1]["detail"]["model"] == model_info(m)
    col.close()


def test_rollback_with_only_the_first_model_is_refused_and_it_keeps_running(
        sdk_bundle, bundles, video, mosquitto, tmp_path, keys):  # noqa: F811
    m, m2 = load_manifest(sdk_bundle), load_manifest(bundles["v2"])
    col = collector(mosquitto.port)
    cfg = device_config(video, mosquitto.address, tmp_path, keys)
    with Device(cfg, col, modelless_ready):
        out = publish_bundle(sdk_bundle, mosquitto.address, devices=[DEVICE], wait_s=30, sign_key=keys["key"])
        assert out[0].outcome == "applied", out
        back = rollback(mosquitto.address, devices=[DEVICE], sign_key=keys["key"], wait_s=20)
        assert [o.outcome for o in back] == ["refused"], back
        assert back[0].reason == "rollback refused: no previous model to roll back to", back[0].reason
        last = retained_state(mosquitto.port)
        assert last["last_update"]["update_id"] == back[0].update_id and last["last_update"]["outcome"] == "refused"
        assert last["active"]["update_id"] == out[0].update_id and last["previous"] is None
        assert all(r["model"] == model_info(m) for r in flowing(col))
        assert more_captures(col, n=1)[0]["model"] == model_info(m)
        # a second model: now the first one is what a rollback returns to
        second = publish_bundle(bundles["v2"], mosquitto.address, devices=[DEVICE], wait_s=30, sign_key=keys["key"])
        assert second[0].outcome == "applied", second
        assert retained_state(mosquitto.port)["previous"]["update_id"] == out[0].update_id
        assert all(r["model"] == model_info(m2) for r in flowing(col))
        again = rollback(mosquitto.address, devices=[DEVICE], sign_key=keys["key"], wait_s=20)
        assert [(o.outcome, o.version) for o in again] == [("rolled_back", m.version)], again
        assert all(r["model"] == model_info(m) for r in flowing(col))
    refused = [e for e in validate("event", col.on(f"{DEVICE}/event")) if e["event"] == "model_update_refused"]
    assert [e["detail"]["update_id"] for e in refused] == [back[0].update_id]
    col.close()


def test_store_start_up_of_a_device_bootstrapped_without_a_model(sdk_bundle, tmp_path):  # noqa: F811
    """``startup_model``: the first model installed on a model-less device runs while the config
    says ``model: null``; a model configured since wins (as when the configured model changes)."""
    m = load_manifest(sdk_bundle)
    store = ModelStore(tmp_path / "store")
    assert store.startup_model(None) is None  # nothing installed: capture mode
    shutil.copytree(sdk_bundle, tmp_path / "incoming")
    d = store.install(tmp_path / "incoming", m, "ab" * 16)
    store.activate(model_ref(m, "ab" * 16, d), None)
    store.save()
    assert store.state["base"] is None and store.previous is None
    assert ModelStore(tmp_path / "store").startup_model(None) == tmp_path / "store" / d
    assert ModelStore(tmp_path / "store").startup_model(Path("/nonexistent")) == tmp_path / "store" / d
    again = ModelStore(tmp_path / "store")
    assert again.startup_model(sdk_bundle) == sdk_bundle  # a model configured since wins
    assert again.active is None and ModelStore(tmp_path / "store").startup_model(None) is None
