"""Small pure-function tests of the device package (no broker, no video)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from sdk import classify, messages
from sdk.bundle import InputSpec, Normalization, Quantization
from sdk.config import Config
from sdk.errors import MqttConfigError
from sdk.homeassistant import discovery_messages
from sdk.mqtt import Outbox, parse_broker
from sdk.preprocess import Preprocessor, resize
from sdk.sources import parse_source
from sdk.topics import Topics
from sdk.uncertainty import Sampler, SamplingPolicy, encode_image, hamming, measure, phash, reasons_for


class FakeInterp:
    def __init__(self, raw, scale, zp):
        self.raw, self.q = raw, (scale, zp)

    def get_output_details(self):
        return [{"index": 0, "quantization": self.q}]

    def get_tensor(self, i):
        return self.raw[None]


def test_scores_dequantize_in_int64():
    # int8 arithmetic would wrap: 127 - (-128) = 255 does not fit in int8
    s = classify.scores(FakeInterp(np.array([127, -128], np.int8), 1 / 256, -128))
    assert s.dtype == np.float64 and np.allclose(s, [255 / 256, 0.0])
    u = classify.scores(FakeInterp(np.array([255, 0], np.uint8), 0.5, 10))
    assert np.allclose(u, [122.5, -5.0])


def test_top_k_and_threshold():
    v = np.array([0.1, 0.5, 0.05, 0.35])
    assert classify.top_k(v, 2) == [classify.Class(1, 0.5), classify.Class(3, 0.35)]
    assert [c.id for c in classify.top_k(v, 4, threshold=0.3)] == [1, 3]
    assert len(classify.top_k(v, 10)) == 4
    with pytest.raises(ValueError):
        classify.top_k(v, 0)


def test_quantize_clips_to_dtype():
    d = {"dtype": np.int8, "quantization": (1.0, -128)}
    assert classify.quantize(np.array([0.0, 255.0, 400.0]), d).tolist() == [-128, 127, 127]


def test_preprocess_lut_uses_manifest_normalization_and_quantization():
    spec = InputSpec(shape=[1, 4, 4, 1], dtype="uint8", quantization=Quantization(scale=1 / 255, zero_point=0),
                     colour="grey", normalization=Normalization(scale=1 / 255, offset=0.0))
    pre = Preprocessor(spec, {"shape": [1, 4, 4, 1], "dtype": np.uint8, "quantization": (1 / 255, 0)}, mode="plain")
    x = pre(np.full((8, 8, 3), 200, np.uint8))
    assert x.shape == (1, 4, 4, 1) and x.dtype == np.uint8 and int(x[0, 0, 0, 0]) == 200


def test_preprocess_inverts_to_model_polarity():
    spec = InputSpec(shape=[1, 4, 4, 1], dtype="float32", colour="grey", polarity="light_on_dark")
    pre = Preprocessor(spec, {"shape": [1, 4, 4, 1], "dtype": np.float32, "quantization": (0.0, 0)}, mode="plain")
    assert float(pre(np.full((8, 8), 230, np.uint8)).max()) == 25.0


@pytest.mark.parametrize("mode", ["stretch", "centre_crop", "letterbox"])
def test_resize_modes(mode):
    img = np.full((100, 200), 255, np.uint8)
    out = resize(img, (50, 50), mode)
    assert out.shape == (50, 50)
    if mode == "letterbox":
        assert out[0, 25] == 0 and out[25, 25] == 255


def test_topics_built_in_one_place():
    t = Topics("cam-1", prefix="site/edge")
    assert t.result == "site/edge/v1/cam-1/result"
    assert t.status.endswith("/status") and t.fleet_model_set == "site/edge/v1/fleet/model/set"
    assert t.all_devices("result") == "site/edge/v1/+/result"
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(ValueError):
            Topics(bad)


def test_uncertainty_measures():
    sure = measure(np.array([0.98, 0.01, 0.01]))
    unsure = measure(np.array([0.4, 0.35, 0.25]))
    pol = SamplingPolicy()
    assert reasons_for(sure, pol) == []
    assert set(reasons_for(unsure, pol)) == {"low_confidence", "small_margin", "high_entropy"}
    assert measure(np.ones(10) / 10).entropy == pytest.approx(1.0)


def test_rate_limit_per_minute_and_hour():
    now = [0.0]
    s = Sampler(SamplingPolicy(per_minute=2, per_hour=3, dedup_distance=-1), clock=lambda: now[0])
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(10)]
    unsure = np.array([0.5, 0.5])
    got = [s.consider(frames[i], unsure) is not None for i in range(3)]
    assert got == [True, True, False] and s.rate_limited == 1
    now[0] = 61
    assert s.consider(frames[3], unsure) is not None
    assert s.consider(frames[4], unsure) is None  # hour cap of 3 reached
    now[0] = 3700
    assert s.consider(frames[5], unsure) is not None


def test_dedup_by_perceptual_hash():
    s = Sampler(SamplingPolicy(per_minute=100, per_hour=100))
    rng = np.random.default_rng(1)
    a = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (9, 9), 3)
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)  # same scene, a bit brighter
    c = cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), (9, 9), 3)
    assert hamming(phash(a), phash(b)) <= 6 < hamming(phash(a), phash(c))
    unsure = np.array([0.5, 0.5])
    assert s.consider(a, unsure) is not None and s.consider(b, unsure) is None and s.duplicates == 1
    assert s.consider(c, unsure) is not None


def test_random_audit_fraction():
    s = Sampler(SamplingPolicy(audit_fraction=1.0, per_minute=100, per_hour=100, dedup_distance=-1), seed=0)
    sel = s.consider(np.zeros((32, 32, 3), np.uint8), np.array([0.99, 0.01]))
    assert sel is not None and sel.reasons == ["random_audit"]


def test_encoded_image_respects_size_cap():
    rng = np.random.default_rng(2)
    noisy = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)  # incompressible
    for fmt in ("jpeg", "png"):
        data, w, h = encode_image(noisy, fmt, max_bytes=15000, max_side=320)
        assert len(data) <= 15000 and max(w, h) <= 320
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (h, w)


def test_outbox_is_bounded_fifo(tmp_path):
    o = Outbox(tmp_path / "q.sqlite", max_messages=5)
    for i in range(8):
        o.put("t", str(i).encode(), 1, False)
    assert len(o) == 5 and o.dropped == 3
    rows = o.peek(0, 10)
    assert [r[2] for r in rows] == [b"3", b"4", b"5", b"6", b"7"]
    o.delete([rows[0][0], rows[1][0]])
    assert len(o) == 3
    o.close()
    assert len(Outbox(tmp_path / "q.sqlite", max_messages=5)) == 3  # survives a restart


def test_parse_broker_and_source():
    assert parse_broker("h:1884") == ("h", 1884) and parse_broker("h") == ("h", 1883)
    assert parse_broker("[::1]:1885") == ("::1", 1885)
    for bad in ("h:0", "h:x", ""):
        with pytest.raises(MqttConfigError):
            parse_broker(bad)
    assert parse_source("camera:0") == ("camera", "0")
    assert parse_source("rtsp://u:p@cam/stream") == ("rtsp", "rtsp://u:p@cam/stream")
    assert parse_source("video:/a:b.mp4") == ("video", "/a:b.mp4")
    with pytest.raises(ValueError, match="camera:N, video:PATH"):
        parse_source("webcam")


def test_home_assistant_discovery_is_retained_and_points_at_topics():
    t = Topics("cam1")
    msgs = discovery_messages(t, model_name="lenet", sw_version="0.1")
    assert all(retain and qos == 1 for _, _, qos, retain in msgs)
    by_key = {topic.split("/")[-2]: json.loads(p) for topic, p, _, _ in msgs}
    assert by_key["label"]["state_topic"] == t.result and by_key["fps"]["state_topic"] == t.metrics
    assert by_key["label"]["availability_topic"] == t.status
    assert by_key["online"]["payload_on"] == "online"
    assert len({d["unique_id"] for d in by_key.values()}) == 4


def test_message_builders_match_schemas():
    model = {"name": "m", "version": "1", "sha256": "0" * 64}
    top = messages.ranked(classify.top_k(np.array([0.7, 0.3]), 2), ["a", "b"])
    r = messages.result(device="d", seq=0, run_id="r", ts=1.0, frame_id=0, model=model, top_k=top,
                        latency_ms={"preprocess": 1, "inference": 2, "postprocess": 0.1, "total": 3.1}, box=(1, 2, 3, 4))
    jsonschema.validate(r, messages.load_schema("result"))
    e = messages.event(device="d", ts=1.0, run_id="r", event="started")
    jsonschema.validate(e, messages.load_schema("event"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**r, "seq": -1}, messages.load_schema("result"))
    for kind in messages.SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(messages.load_schema(kind))


def test_every_config_field_is_described():
    def walk(model):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(Config)
    assert Config.model_config["extra"] == "forbid"


def test_names_that_become_topics_are_matched_whole():
    """'^...$' with re.match accepts a trailing newline; every name check uses fullmatch."""
    from sdk.config import config_from_dict
    from sdk.errors import ConfigError
    from sdk.topics import Topics, all_devices, check_segment, device_of, fleet_model_set

    for bad in ("cam\n", "cam\r\n", "cam\x00", "ca m", "cam/1", "", "+", "#"):
        with pytest.raises(ConfigError, match="device_id"):
            config_from_dict({"device_id": bad})
        with pytest.raises(ValueError):
            Topics(bad)
        with pytest.raises(ValueError):
            check_segment(bad, "shared-subscription group")
        if "/" not in bad:  # a prefix may hold slashes
            with pytest.raises(ValueError):
                fleet_model_set(f"site/{bad}")
        assert device_of(f"edge/v1/{bad}/sample", "sample") is None
    assert device_of("edge/v1/cam-1/sample", "sample") == "cam-1"
    assert device_of("site/edge/v1/cam-1/model/state", "model/state", "site/edge") == "cam-1"
    assert device_of("edge/v1/fleet/model/state", "model/state") is None
    assert device_of("edge/v1/cam-1/result", "sample") is None
    assert all_devices("sample") == "edge/v1/+/sample"


def test_the_demo_does_not_import_from_tests():
    """The demo runs on a user's machine, where tests/ and ../shared need not exist."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    test_modules = {p.stem for p in (repo / "tests").glob("*.py")}
    for script in sorted((repo / "examples").glob("*.py")):
        tree = ast.parse(script.read_text())
        imported = {n.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & test_modules, (script.name, imported & test_modules)
        assert '"tests"' not in script.read_text() and "'tests'" not in script.read_text(), script.name
