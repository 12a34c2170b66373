"""Capture mode (``edge-classify --capture-every 5s``, ``sampling.capture_every_s``): one frame every
N seconds sent as a sample, with or without a model, to bootstrap a dataset.

Real parts: MJPG videos of real MNIST digits decoded by OpenCV in ``sdk.run`` (and the
``edge-classify`` entry point), the real INT8 LiteRT bundle of ``sdk_bundle_fixture``, a real
mosquitto; every payload validated against the shipped schemas, and the model-less samples fed to
the host's real ``FeedbackStore`` and exported. The videos are 10 fps, so with the schedule on the
video's own clock the frames captured are known exactly: every 2 s of a 6 s video is frames 0, 20, 40.
"""
from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

import sdk
from contract import validate
from mqtt_fixtures import Collector, mosquitto  # noqa: F401  (fixture)
from sdk.app import capture_clock
from sdk.cli import main, parse_duration
from sdk.config import Config, ConfigError, load_config
from sdk.errors import ExitCode
from sdk.pipeline import Classifier, frame_time
from sdk.runtime import load_bundle
from sdk.sources import Frame, ImageDirSource, VideoFileSource
from sdk.uncertainty import CAPTURE, CaptureSchedule, SamplingPolicy, measure, reasons_for
from sdk_bundle_fixture import sdk_bundle  # noqa: F401  (fixture)
from train.data.videos import paper_frame, write_digit_video, write_region_video
from train.loop.store import FeedbackStore

DEVICE = "cap1"
N = 60                    # frames of each video: 6 s at 10 fps
EVERY_S = 2.0
CAPTURED = [0, 20, 40]    # the frames due: the first, then one every 2 s of the video's clock
# two fixed regions of the 640x480 frame, each showing a digit at a whole-number scale (4x, 3x)
REGIONS = {"left": (64, 96, 112, 112), "right": (400, 200, 84, 84)}
HALF = {name: [v // 2 for v in box] for name, box in REGIONS.items()}  # in the 320x240 image sent


@pytest.fixture(scope="module")
def digit_video(tmp_path_factory, distinct_digits):
    x, _ = distinct_digits
    return write_digit_video(tmp_path_factory.mktemp("capture") / "digits.avi", x[:N], seed=5)


@pytest.fixture(scope="module")
def region_video(tmp_path_factory, distinct_digits):
    """Digit ``i`` in ``left`` and digit ``N + i`` in ``right`` of frame ``i``, over clutter."""
    x, _ = distinct_digits
    rgb = np.repeat(x[..., None], 3, axis=-1)
    regions = {"left": (REGIONS["left"], rgb[:N]), "right": (REGIONS["right"], rgb[N:2 * N])}
    return write_region_video(tmp_path_factory.mktemp("capture") / "regions.avi", regions, quality=100)


def decoded_frames(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(img)
    cap.release()
    return out


def image_of(field: dict, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    data = base64.b64decode(field["data"])
    assert len(data) == field["bytes"]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img.shape[1] == field["width"] and img.shape[0] == field["height"]
    return img


def config(source, broker, tmp_path, model=None, **kw) -> Config:
    return Config(device_id=DEVICE, source=source, model=None if model is None else str(model),
                  mqtt={"broker": broker, "outbox_path": str(tmp_path / "outbox.sqlite")},
                  update={"enabled": False}, metrics_interval_s=0.5, **kw)


def collect(mosquitto) -> Collector:  # noqa: F811
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/#",))
    assert col.wait_subscribed()
    return col


def wait_stopped(col: Collector, samples: int) -> None:
    assert col.wait_for(lambda c: len(c.on("/sample")) >= samples and any(b'"stopped"' in p for p in c.on("/event")))


# -- the schedule --------------------------------------------------------------------------
def test_schedule_first_frame_then_one_per_period_on_a_fixed_grid():
    s = CaptureSchedule(2.0)
    assert [i for i in range(N) if s.due(i / 10)] == CAPTURED
    for every, step in ((0.1, 1), (0.2, 2), (0.3, 3)):  # 3 * 0.1 > 0.3 in floats: frame 3 is on time all the same
        s = CaptureSchedule(every)
        assert [i for i in range(30) if s.due(i / 10)] == list(range(0, 30, step)), every
    # late frames do not shift the grid (2, 4, 6 ...), a long gap sends one frame, not a burst
    s = CaptureSchedule(2.0)
    times = [0.0, 0.9, 2.3, 3.9, 4.1, 9.0, 9.5, 10.0, 11.9]
    assert [t for t in times if s.due(t)] == [0.0, 2.3, 4.1, 9.0, 10.0]
    s = CaptureSchedule(5.0)  # a clock set back starts the grid again at that frame
    assert [t for t in (100.0, 101.0, 50.0, 52.0, 55.0) if s.due(t)] == [100.0, 50.0, 55.0]
    with pytest.raises(ValueError, match="> 0"):
        CaptureSchedule(0)


def test_the_clock_is_a_video_files_own_else_the_capture_time(digit_video, tmp_path):
    with VideoFileSource(digit_video) as video:
        assert video.fps == 10
        clock = capture_clock(video)
        frames = [video.read(5) for _ in range(3)]
        assert [clock(f) for f in frames] == [0.0, 0.1, 0.2]  # not the decode time
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    folder = ImageDirSource(tmp_path)
    assert capture_clock(folder) is frame_time
    assert frame_time(Frame(np.zeros((1, 1)), 7, 1234.5)) == 1234.5


# -- without a model -----------------------------------------------------------------------
def test_without_a_model_the_cli_captures_every_2s_of_the_video_and_publishes_no_result(
        digit_video, mosquitto, tmp_path, capsys):  # noqa: F811
    col = collect(mosquitto)
    code = main(["--video", str(digit_video), "--no-model", "--capture-every", "2s", "--device-id", DEVICE,
                 "--broker", mosquitto.address, "--outbox", str(tmp_path / "outbox.sqlite"),
                 "--update-store", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert code == 0, err
    summary = json.loads(err.strip().splitlines()[-1])
    assert (summary["frames"], summary["results"], summary["samples"], summary["captured"]) == (N, 0, 3, 3)
    wait_stopped(col, 3)
    samples = validate("sample", col.on("/sample"))
    assert [s["frame_id"] for s in samples] == CAPTURED
    frames = decoded_frames(digit_video)
    for s in samples:
        assert s["model"] is None and s["top_k"] == [] and s["scores"] == []
        assert (s["confidence"], s["margin"], s["entropy"]) == (None, None, None)
        assert s["reasons"] == [CAPTURE] and "model_input" not in s and "region" not in s
        assert s["image"]["format"] == "jpeg" and s["image"]["bytes"] <= 48000
        img = image_of(s["image"], cv2.IMREAD_COLOR)
        assert img.shape == (240, 320, 3)  # the frame, at sampling.max_side
        diffs = [np.abs(img.astype(int) - cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA)).mean()
                 for f in frames]
        assert int(np.argmin(diffs)) == s["frame_id"] and diffs[s["frame_id"]] < 4  # that very frame
    assert not col.on("/result")
    metrics = validate("metrics", col.on("/metrics"))
    assert all(m["model"] is None for m in metrics)
    assert (metrics[-1]["frames"], metrics[-1]["samples"], metrics[-1]["samples_captured"]) == (N, 3, 3)
    events = validate("event", col.on("/event"))
    assert events[0]["event"] == "started" and events[0]["detail"]["model"] is None
    assert [p for t, p, _ in col.messages if t.endswith("/status")][0] == b"online"
    # no model yet: the updater listens for the first one (tests/test_first_model.py); nothing active, nothing stored
    assert [(s["active"], s["previous"], s["last_update"]) for s in validate("model-state", col.on("/model/state"))] \
        == [(None, None, None)]
    assert not (tmp_path / "models").exists()
    col.close()


def test_without_a_model_each_region_is_captured_with_its_box_and_the_store_exports_the_crops(
        region_video, distinct_digits, mosquitto, tmp_path):  # noqa: F811
    _, y = distinct_digits
    col = collect(mosquitto)
    cfg = config(f"video:{region_video}", mosquitto.address, tmp_path,
                 preprocess={"regions": {name: {"roi": list(box)} for name, box in REGIONS.items()}},
                 sampling={"enabled": False, "capture_every_s": EVERY_S, "image_format": "png",
                           "max_bytes": 1_000_000})
    stats = sdk.run(cfg)
    assert (stats.frames, stats.published, stats.samples, stats.captured) == (N, 0, 6, 6)
    wait_stopped(col, 6)
    samples = validate("sample", col.on("/sample"))
    assert [(s["frame_id"], s["region"]["name"]) for s in samples] == \
        [(f, name) for f in CAPTURED for name in REGIONS]
    frames = decoded_frames(region_video)
    for s in samples:
        assert s["model"] is None and s["reasons"] == [CAPTURE] and "model_input" not in s
        assert s["region"]["box"] == HALF[s["region"]["name"]]
        sent = image_of(s["image"])
        assert sent.shape == (240, 320, 3)
        expected = cv2.resize(frames[s["frame_id"]], (320, 240), interpolation=cv2.INTER_AREA)
        assert np.abs(sent.astype(int) - expected).mean() < 1  # the frame itself, PNG: as decoded
    assert not col.on("/result")
    col.close()

    store = FeedbackStore(tmp_path / "store", labels=[str(i) for i in range(10)])
    ids = [store.add(s) for s in samples]
    assert None not in ids and len(set(ids)) == 6
    truth = {}
    for sid, s in zip(ids, samples):
        digit = s["frame_id"] + (N if s["region"]["name"] == "right" else 0)
        truth[sid] = digit
        stored = store.get(sid)
        assert (stored.model_name, stored.model_version, stored.region) == ("", "", s["region"]["name"])
        store.set_label(sid, str(y[digit]))
    counts = store.export_folder(tmp_path / "export")
    assert sum(counts.values()) == 6
    x, _ = distinct_digits
    for sid, digit in truth.items():
        (path,) = (tmp_path / "export").glob(f"*/{sid}.png")
        assert path.parent.name == str(y[digit])
        crop = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        name = store.get(sid).region
        assert crop.shape == (HALF[name][3], HALF[name][2])  # the region, cropped by its box
        # and what it shows is that region's digit, not the other region's nor another frame's
        back = cv2.resize(crop, (28, 28), interpolation=cv2.INTER_AREA).astype(int)
        errors = [np.abs(back - x[j]).mean() for j in truth.values()]
        assert list(truth.values())[int(np.argmin(errors))] == digit and min(errors) < 20, errors
    store.close()


def test_a_static_scene_is_captured_once_per_region(distinct_digits, mosquitto, tmp_path):  # noqa: F811
    """Due at frames 0, 10, 20, 30 of a still scene: the first is sent, the rest are duplicates. Two
    regions that show the same thing are each sent once: duplicates are judged within a region."""
    x, _ = distinct_digits
    frame = paper_frame(x[0], np.random.default_rng(0))
    frame[240:, :320] = frame[:240, :320]  # the bottom-left quarter is a copy of the top-left one
    path = tmp_path / "static.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for _ in range(40):
        w.write(frame)
    w.release()
    col = collect(mosquitto)
    stats = sdk.run(config(f"video:{path}", mosquitto.address, tmp_path,
                           sampling={"enabled": False, "capture_every_s": 1.0}))
    assert (stats.frames, stats.samples, stats.captured) == (40, 1, 1)
    wait_stopped(col, 1)
    assert [s["frame_id"] for s in validate("sample", col.on("/sample"))] == [0]
    last = validate("metrics", col.on("/metrics"))[-1]
    assert (last["samples"], last["samples_captured"], last["samples_duplicate"]) == (1, 1, 3)
    col.close()

    col = collect(mosquitto)
    regions = {"top": {"roi": [0, 0, 320, 240]}, "bottom": {"roi": [0, 240, 320, 240]}}
    stats = sdk.run(config(f"video:{path}", mosquitto.address, tmp_path, preprocess={"regions": regions},
                           sampling={"enabled": False, "capture_every_s": 1.0, "dedup_distance": 0}))
    assert (stats.samples, stats.captured) == (2, 2)
    wait_stopped(col, 2)
    samples = validate("sample", col.on("/sample"))
    assert [(s["frame_id"], s["region"]["name"]) for s in samples] == [(0, "top"), (0, "bottom")]
    assert validate("metrics", col.on("/metrics"))[-1]["samples_duplicate"] == 6
    col.close()


def test_without_a_model_a_single_roi_sends_its_crop(region_video, mosquitto, tmp_path):  # noqa: F811
    col = collect(mosquitto)
    box = REGIONS["left"]
    stats = sdk.run(config(f"video:{region_video}", mosquitto.address, tmp_path, preprocess={"roi": list(box)},
                           sampling={"enabled": False, "capture_every_s": EVERY_S, "image_format": "png",
                                     "max_bytes": 1_000_000}))
    assert (stats.samples, stats.captured) == (3, 3)
    wait_stopped(col, 3)
    samples = validate("sample", col.on("/sample"))
    frames = decoded_frames(region_video)
    assert [s["frame_id"] for s in samples] == CAPTURED
    x0, y0, w, h = box
    for s in samples:
        assert "region" not in s and s["model"] is None
        sent = image_of(s["image"])
        assert np.array_equal(sent, frames[s["frame_id"]][y0:y0 + h, x0:x0 + w])  # the roi, full size
    col.close()


# -- with a model --------------------------------------------------------------------------
def unsure_reasons(result: dict, policy: SamplingPolicy) -> list[str]:
    probs = np.zeros(10)
    for c in result["top_k"]:
        probs[c["index"]] = c["score"]
    return reasons_for(measure(probs), policy)


def test_with_a_model_captures_carry_the_model_input_merge_reasons_and_skip_the_rate_limit(
        sdk_bundle, region_video, mosquitto, tmp_path):  # noqa: F811
    """Most (frame, region) pairs are unsure here (min_confidence 0.999), and per_minute 5 lets the first
    5 of them through; the 6 captures come on top of them, once each, with the frame's uncertainty
    reasons (if any) and ``capture``."""
    sampling = {"enabled": True, "min_confidence": 0.999, "per_minute": 5, "per_hour": 1000, "dedup_distance": 0,
                "capture_every_s": EVERY_S}
    regions = {name: {"roi": list(box)} for name, box in REGIONS.items()}
    col = collect(mosquitto)
    stats = sdk.run(config(f"video:{region_video}", mosquitto.address, tmp_path, model=sdk_bundle, top_k=10,
                           preprocess={"regions": regions}, sampling=sampling))
    assert (stats.frames, stats.published, stats.samples, stats.captured) == (N, 2 * N, 11, 6)
    wait_stopped(col, 11)
    assert col.wait_for(lambda c: len(c.on("/result")) >= 2 * N)
    policy = SamplingPolicy(min_confidence=0.999)
    unsure = {(r["frame_id"], r["region"]): unsure_reasons(r, policy)
              for r in validate("result", col.on("/result"))}
    assert len(unsure) == 2 * N
    order = [(f, name) for f in range(N) for name in REGIONS]  # how the device went through them
    captures = [k for k in order if k[0] in CAPTURED]
    unsure_others = [k for k in order if k[0] not in CAPTURED and unsure[k]]
    assert len(unsure_others) > 20 and any(unsure[k] for k in captures)
    audited = unsure_others[:5]
    samples = validate("sample", col.on("/sample"))
    got = {(s["frame_id"], s["region"]["name"]): s for s in samples}
    assert len(got) == len(samples) == 11  # never twice for one frame and region
    assert sorted(got) == sorted(captures + audited)
    for key in captures:
        assert got[key]["reasons"] == unsure[key] + [CAPTURE]
    for key in audited:
        assert got[key]["reasons"] == unsure[key]
    manifest = json.loads((sdk_bundle / "manifest.json").read_text())
    b = load_bundle(sdk_bundle)
    classifier = Classifier(b, top_k=10, regions={name: (box, "auto") for name, box in REGIONS.items()})
    frames = decoded_frames(region_video)
    for (frame_id, name), s in got.items():
        assert s["model"]["sha256"] == manifest["sha256"] and len(s["top_k"]) == 10 and len(s["scores"]) == 10
        assert s["region"]["box"] == HALF[name]
        mi = s["model_input"]
        assert (mi["format"], mi["width"], mi["height"], mi["colour"]) == ("png", 28, 28, "grey")
        fed = classifier.classify(frames[frame_id], name).model_image
        assert np.array_equal(image_of(mi), fed)  # exactly what the model was fed
    last = validate("metrics", col.on("/metrics"))[-1]
    assert (last["samples"], last["samples_captured"], last["samples_rate_limited"]) == (11, 6, len(unsure_others) - 5)
    col.close()


def test_capture_works_with_sampling_disabled(sdk_bundle, digit_video, mosquitto, tmp_path):  # noqa: F811
    col = collect(mosquitto)
    stats = sdk.run(config(f"video:{digit_video}", mosquitto.address, tmp_path, model=sdk_bundle, top_k=3,
                           sampling={"enabled": False, "capture_every_s": EVERY_S}))
    assert (stats.frames, stats.published, stats.samples, stats.captured) == (N, N, 3, 3)
    wait_stopped(col, 3)
    samples = validate("sample", col.on("/sample"))
    assert [s["frame_id"] for s in samples] == CAPTURED
    results = {r["frame_id"]: r for r in validate("result", col.on("/result"))}
    for s in samples:
        assert s["reasons"] == [CAPTURE] and "region" not in s
        assert s["top_k"] == results[s["frame_id"]]["top_k"] and s["seq"] == results[s["frame_id"]]["seq"]
        assert s["confidence"] == max(s["scores"])
        assert (s["model_input"]["width"], s["model_input"]["height"]) == (28, 28)
    col.close()


# -- configuration and flags ---------------------------------------------------------------
def test_durations_and_the_flag_errors(tmp_path, capsys):
    assert [parse_duration(t) for t in ("5s", "500ms", "2m", "1h", "5", "2.5", ".5s", " 10s ")] == \
        [5, 0.5, 120, 3600, 5, 2.5, 0.5, 10]
    for bad in ("0", "0s", "-1", "5x", "", "5sec", "1e3", "inf", "nan", "s"):
        code = main(["--capture-every", bad, "--no-model", "--print-config"])
        err = capsys.readouterr().err
        assert code == ExitCode.USAGE, bad
        assert "argument --capture-every" in err and "5s, 500ms, 2m, 1h" in err, err
    code = main(["--capture-every", "2m", "--no-model", "--print-config"])
    out = capsys.readouterr().out
    assert code == 0 and "model: null" in out and "capture_every_s: 120.0" in out
    code = main(["--no-model", "--video", "x.avi"])  # no model and nothing to capture
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG and "model is null" in err and "sampling.capture_every_s" in err, err
    assert main(["--no-model", "--model", "b", "--capture-every", "5s"]) == ExitCode.USAGE
    assert "not allowed with" in capsys.readouterr().err
    path = tmp_path / "device.yaml"
    path.write_text("model: null\nsampling: {enabled: false, capture_every_s: 5}\n")
    assert load_config(path).model is None
    path.write_text("model: null\n")
    with pytest.raises(ConfigError, match="sampling.capture_every_s"):
        load_config(path)
    path.write_text("sampling: {capture_every_s: 0}\n")
    with pytest.raises(ConfigError, match="sampling.capture_every_s: Input should be greater than 0"):
        load_config(path)
    path.write_text("model: null\nsampling: {capture_every_s: 5}\n")
    assert main(["validate-config", str(path)]) == 0
    assert "model none (capture every 5 s)" in capsys.readouterr().out
