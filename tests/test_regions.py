"""Your own classes in colour, in named regions of a camera frame (issue 12, the device side).

Real parts: a small colour model trained here on real CIFAR-10 photos (../shared/data/cifar10-jpeg)
and exported to full INT8; real photos of the CIFAR-10 test set placed in two fixed regions of a
cluttered 640x480 scene, written as an MJPG video and as a PNG folder, decoded by OpenCV in
``sdk.run``; a real mosquitto; the payloads validated against the shipped schemas.
"""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

import sdk
from contract import validate
from mqtt_fixtures import Collector, mosquitto  # noqa: F401  (fixture)
from sdk.batch import predict_batch
from sdk.config import Config, ConfigError, load_config
from sdk.preprocess import crop_roi, roi_box
from sdk.runtime import load_bundle
from train.data.videos import region_frames, write_region_video

DEVICE = "belt-cam"
N = 300  # frames; each shows one photo in each region
# The scale of each photo in the frame is a whole number, as a fixed camera over a fixed spot would
# give; the device's ROI crop + INTER_AREA resize brings it back to the model's 32x32.
REGIONS = {"bay1": (64, 96, 128, 128), "bay2": (400, 200, 96, 96)}


@pytest.fixture(scope="module")
def cifar(shared_data, tmp_path_factory):
    """A LeNet-5 on 4,000 real CIFAR-10 training photos (RGB), exported as a full-INT8 bundle, and
    the held-out test photos the scenes are made of."""
    from train.config import TrainConfig
    from train.data import load_dataset, stratified_sample
    from train.export import export_bundle
    from train.fit import run_training

    data = shared_data / "cifar10-jpeg" / "cifar10-jpeg.zip"
    if not data.is_file():
        pytest.fail(f"test data missing: {data}")
    d = tmp_path_factory.mktemp("cifar")
    run = run_training(TrainConfig(
        model="lenet5", data=str(data), colour="rgb", train_limit=4000, epochs=4, batch_size=64,
        lr_schedule="none", early_stopping_patience=0, runs_dir=str(d), run_name="cifar-lenet",
        tensorboard=False, verbose=0), evaluate=False)
    bundle = export_bundle("rpi", run, d / "bundle", calibration_samples=200, max_accuracy_drop=100).bundle_dir
    test = stratified_sample(load_dataset(str(data), split="test", colour="rgb"), 2 * N + 100, seed=7)
    return bundle, test


def bare_predictions(bundle, x: np.ndarray) -> np.ndarray:
    """The INT8 model on the bare 32x32 test photos, as the device's interpreter runs it."""
    b = load_bundle(bundle)
    return predict_batch(b.interpreter, x, normalization=b.manifest.input.normalization).argmax(1)


def region_config(bundle, source, broker, tmp_path, **kw) -> Config:
    return Config(device_id=DEVICE, source=source, model=str(bundle), top_k=1,
                  preprocess={"regions": {name: {"roi": list(box)} for name, box in REGIONS.items()}},
                  mqtt={"broker": broker, "outbox_path": str(tmp_path / "outbox.sqlite")},
                  sampling=kw.pop("sampling", {"enabled": False}), **kw)


def photos_by_region(test):
    return {"bay1": (REGIONS["bay1"], test.x[:N]), "bay2": (REGIONS["bay2"], test.x[N:2 * N])}


def region_accuracy(col: Collector, region: str, labels: list[str], y: np.ndarray) -> float:
    results = validate("result", col.on(f"/{DEVICE}/{region}/result"))
    assert sorted(r["frame_id"] for r in results) == list(range(N))  # one result per frame, on its own topic
    assert {r["region"] for r in results} == {region}
    pred = {r["frame_id"]: labels.index(r["top_k"][0]["label"]) for r in results}
    return float(np.mean([pred[i] == y[i] for i in range(N)]))


@pytest.mark.parametrize("kind", ["video", "images"])
def test_named_regions_classify_as_well_as_the_bare_photos(cifar, mosquitto, tmp_path, kind):  # noqa: F811
    bundle, test = cifar
    regions = photos_by_region(test)
    if kind == "video":
        source = tmp_path / "belt.avi"
        write_region_video(source, regions, clutter=test.x[2 * N:], quality=100)
    else:
        source = tmp_path / "frames"
        source.mkdir()
        for i, frame in enumerate(region_frames(regions, clutter=test.x[2 * N:])):
            cv2.imwrite(str(source / f"{i:05d}.png"), frame)
    labels = (bundle / "labels.txt").read_text().split()
    bare = bare_predictions(bundle, test.x[:2 * N])
    col = Collector(mosquitto.port, ("edge/#",))
    assert col.wait_subscribed()
    stats = sdk.run(region_config(bundle, f"{kind}:{source}", mosquitto.address, tmp_path))
    assert stats.frames == N and stats.published == 2 * N
    assert col.wait_for(lambda c: len(c.on("/result")) >= 2 * N)
    assert not col.on(f"/{DEVICE}/result")  # with named regions, nothing on the whole-frame topic
    for region, part in (("bay1", slice(0, N)), ("bay2", slice(N, 2 * N))):
        device_acc = region_accuracy(col, region, labels, test.y[part])
        bare_acc = float(np.mean(bare[part] == test.y[part]))
        assert bare_acc > 0.25, bare_acc  # the model learned something (chance is 0.10)
        print(f"{kind} {region}: device {device_acc:.4f}, bare INT8 {bare_acc:.4f}")
        assert round(abs(device_acc - bare_acc) * 100, 6) <= 1.0, (region, device_acc, bare_acc)  # within 1 pt
    col.close()


def test_region_samples_carry_the_model_input_as_fed(cifar, mosquitto, tmp_path):  # noqa: F811
    """Each uncertain region sends its sample with the 32x32 colour crop the model saw, as a standard
    PNG (colours right in any reader), its region name and pixel box."""
    bundle, test = cifar
    regions = {name: (box, photos[:40]) for name, (box, photos) in photos_by_region(test).items()}
    source = tmp_path / "belt.avi"
    write_region_video(source, regions, clutter=test.x[2 * N:], quality=100)
    col = Collector(mosquitto.port, ("edge/#",))
    assert col.wait_subscribed()
    sampling = {"min_confidence": 1.0, "per_minute": 1000, "per_hour": 1000, "dedup_distance": 0}
    stats = sdk.run(region_config(bundle, f"video:{source}", mosquitto.address, tmp_path, sampling=sampling))
    assert stats.samples > 0
    assert col.wait_for(lambda c: len(c.on("/sample")) >= stats.samples)
    samples = validate("sample", col.on(f"/{DEVICE}/sample"))
    assert len(samples) == stats.samples
    assert {s["region"]["name"] for s in samples} == {"bay1", "bay2"}
    for s in samples:
        name = s["region"]["name"]
        scale = s["image"]["width"] / 640  # the frame is sent downscaled (sampling.max_side); so is its box
        assert s["region"]["box"] == [round(v * scale) for v in REGIONS[name]]
        mi = s["model_input"]
        assert (mi["format"], mi["width"], mi["height"], mi["colour"]) == ("png", 32, 32, "rgb")
        data = base64.b64decode(mi["data"])
        assert len(data) == mi["bytes"]
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        photo = regions[name][1][s["frame_id"]]
        # what the model saw is the photo back (MJPG and the resize move pixels a little); a
        # channel swap or the wrong crop would be far off
        assert np.abs(rgb.astype(int) - photo).mean() < 6
    col.close()


def test_roi_in_pixels_or_fractions(tmp_path):
    frame = np.arange(480 * 640 * 3, dtype=np.uint32).reshape(480, 640, 3).astype(np.uint8)
    assert roi_box(frame.shape, [0.1, 0.2, 0.5, 0.25]) == (64, 96, 320, 120)
    assert roi_box(frame.shape, [64, 96, 320, 120]) == (64, 96, 320, 120)
    assert np.array_equal(crop_roi(frame, [0.1, 0.2, 0.5, 0.25]), crop_roi(frame, [64, 96, 320, 120]))
    assert roi_box(frame.shape, [600, 400, 100, 100]) == (600, 400, 40, 80)  # clipped to the frame
    with pytest.raises(ValueError, match="empty"):
        roi_box(frame.shape, [700, 10, 50, 50])
    Config(preprocess={"roi": [64, 96, 320, 120], "resize": "letterbox"})
    Config(preprocess={"regions": {"door": {"roi": [0.5, 0, 0.5, 1], "resize": "centre_crop"}}})
    bad = {
        "roi: [0.5, 0.5, 0.7, 0.2]": "x + w <= 1",
        "roi: [10.5, 0, 100, 100]": "whole numbers",
        "roi: [10, 10, 0, 100]": "w, h >= 1",
        "regions: {result: {roi: [0, 0, 10, 10]}}": "taken by the topics",
        "regions: {'a/b': {roi: [0, 0, 10, 10]}}": "invalid region name",
        "roi: [0, 0, 10, 10]\n  regions: {a: {roi: [0, 0, 10, 10]}}": "either roi",
        "resize: squash": "letterbox",
    }
    for body, needle in bad.items():
        path = tmp_path / "device.yaml"
        path.write_text(f"preprocess:\n  {body}\n")
        with pytest.raises(ConfigError, match="preprocess") as e:
            load_config(path)
        assert needle in str(e.value), (body, str(e.value))


def test_home_assistant_gets_a_label_and_confidence_per_region():
    import json

    from sdk.homeassistant import discovery_messages
    from sdk.topics import Topics

    msgs = {t: json.loads(p) for t, p, _, _ in discovery_messages(Topics(DEVICE), regions=["door", "bay_2"])}
    for region in ("door", "bay_2"):
        for key in ("label", "confidence"):
            cfg = msgs[f"homeassistant/sensor/{DEVICE}/{region}_{key}/config"]
            assert cfg["state_topic"] == f"edge/v1/{DEVICE}/{region}/result"
            assert cfg["name"].startswith(f"{region}: ")
    assert f"homeassistant/sensor/{DEVICE}/label/config" not in msgs  # no whole-frame sensor: nothing goes there
    whole = {t for t, *_ in discovery_messages(Topics(DEVICE))}
    assert f"homeassistant/sensor/{DEVICE}/label/config" in whole
