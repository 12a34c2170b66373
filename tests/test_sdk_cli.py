"""edge-classify: config files, subcommands, and a clear message + distinct exit code per bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdk.cli import main
from sdk.config import Config, load_config
from sdk.errors import ConfigError, ManifestError, ModelError, RuntimeUnavailableError, SourceOpenError, SourceReadError
from sdk_bundle_fixture import sdk_bundle  # noqa: F401  (fixture)
from train.data.videos import write_digit_video

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "firmware_configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def short_video(tmp_path_factory, mnist_dir):
    from sdk_bundle_fixture import load_mnist

    x, _ = load_mnist(mnist_dir, "test")
    return write_digit_video(tmp_path_factory.mktemp("v") / "short.avi", x[:5], seed=1)


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr()


def test_exit_codes_are_distinct():
    codes = [c.exit_code for c in (ConfigError, SourceOpenError, SourceReadError, ManifestError, ModelError,
                                   RuntimeUnavailableError)]
    assert len(set(codes)) == len(codes) and not {0, 1, 2} & set(codes)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_firmware_config_loads(path, capsys):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.source and cfg.model
    code, out = run_cli(["validate-config", path], capsys)
    assert code == 0 and out.out.startswith("OK:")


def test_firmware_configs_cover_the_device_kinds():
    assert {p.stem for p in CONFIGS} >= {"rpi4", "rpi5", "coral-usb-rpi", "coral-devboard", "jetson-nano",
                                         "jetson-orin", "x86-generic"}


def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: a\nmqtt: {broker: [unclosed\n")
    code, out = run_cli(["validate-config", bad], capsys)
    assert code == ConfigError.exit_code == 3 and "malformed YAML" in out.err
    code, out = run_cli(["--config", bad, "--no-mqtt"], capsys)
    assert code == 3 and "malformed YAML" in out.err


def test_unknown_key_and_bad_value_rejected(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("device_id: a\nmqtt: {brokr: x:1}\ntop_k: 0\n")
    code, out = run_cli(["validate-config", f], capsys)
    assert code == 3
    assert "mqtt.brokr: unknown key" in out.err and "top_k" in out.err


def test_flags_override_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("device_id: a\ntop_k: 2\nmqtt: {broker: 'h:1'}\n")
    cfg = load_config(f, {"top_k": 5, "mqtt": {"enabled": False}})
    assert cfg.top_k == 5 and cfg.mqtt.broker == "h:1" and not cfg.mqtt.enabled and cfg.device_id == "a"


def test_print_config_is_resolved_yaml(tmp_path, capsys):
    code, out = run_cli(["--video", "x.avi", "--top-k", "4", "--device-id", "cam7", "--print-config"], capsys)
    assert code == 0 and "top_k: 4" in out.out and "source: video:x.avi" in out.out


def test_camera_index_that_does_not_open(sdk_bundle, capsys):
    # A real cv2.VideoCapture on an index with no device (no mock): /dev/video97 does not exist here.
    if Path("/dev/video97").exists():
        pytest.skip("/dev/video97 exists on this machine")
    code, out = run_cli(["--camera", "97", "--model", sdk_bundle, "--no-mqtt"], capsys)
    assert code == SourceOpenError.exit_code == 4
    assert "camera index 97 does not open" in out.err


def test_unreadable_video(sdk_bundle, tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 1000)
    code, out = run_cli(["--video", junk, "--model", sdk_bundle, "--no-mqtt"], capsys)
    assert code == SourceReadError.exit_code == 5 and "not a readable video" in out.err
    code, out = run_cli(["--video", tmp_path / "missing.avi", "--model", sdk_bundle, "--no-mqtt"], capsys)
    assert code == 5 and "not found" in out.err
    code, out = run_cli(["--images", tmp_path / "nodir", "--model", sdk_bundle, "--no-mqtt"], capsys)
    assert code == 5


def test_bundle_without_manifest(sdk_bundle, short_video, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(sdk_bundle, b)
    (b / "manifest.json").unlink()
    code, out = run_cli(["--video", short_video, "--model", b, "--no-mqtt"], capsys)
    assert code == ManifestError.exit_code == 6 and "no manifest.json" in out.err
    (b / "manifest.json").write_text("{not json")
    code, out = run_cli(["--video", short_video, "--model", b, "--no-mqtt"], capsys)
    assert code == 6 and "invalid manifest" in out.err


def _copy(src, dst) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupt_model(sdk_bundle, short_video, tmp_path, capsys):
    b = _copy(sdk_bundle, tmp_path / "b")
    data = bytearray((b / "model.tflite").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    (b / "model.tflite").write_bytes(bytes(data))
    code, out = run_cli(["--video", short_video, "--model", b, "--no-mqtt"], capsys)
    assert code == ModelError.exit_code == 7 and "sha256" in out.err
    # a truncated model whose manifest was "fixed" to match it: the interpreter refuses it
    from sdk.bundle import sha256_file

    (b / "model.tflite").write_bytes(bytes(data[:200]))
    m = json.loads((b / "manifest.json").read_text())
    m["sha256"] = sha256_file(b / "model.tflite")
    (b / "manifest.json").write_text(json.dumps(m))
    code, out = run_cli(["--video", short_video, "--model", b, "--no-mqtt"], capsys)
    assert code == 7 and "not a loadable TFLite model" in out.err


def test_model_not_matching_its_manifest(sdk_bundle, short_video, tmp_path, capsys):
    b = _copy(sdk_bundle, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["labels"] = m["labels"][:5]
    m["input"]["quantization"]["zero_point"] += 3
    (b / "manifest.json").write_text(json.dumps(m))
    code, out = run_cli(["--video", short_video, "--model", b, "--no-mqtt"], capsys)
    assert code == 7 and "does not match its manifest" in out.err and "5 labels" in out.err


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # LiteRT Delegate.__del__ bug
def test_edgetpu_delegate_missing(sdk_bundle, short_video, capsys):
    import ctypes.util

    if ctypes.util.find_library("edgetpu"):
        pytest.skip("libedgetpu is installed here")
    code, out = run_cli(["--video", short_video, "--model", sdk_bundle, "--no-mqtt", "--delegate", "edgetpu"], capsys)
    assert code == RuntimeUnavailableError.exit_code == 8 and "libedgetpu.so.1" in out.err


def test_bad_broker_and_source_spec(sdk_bundle, short_video, capsys):
    code, out = run_cli(["--video", short_video, "--model", sdk_bundle, "--broker", "host:notaport"], capsys)
    assert code == 9 and "HOST:PORT" in out.err
    code, out = run_cli(["--model", sdk_bundle, "--no-mqtt"], capsys)
    assert code == 3 and "no frame source" in out.err


def test_a_bad_setting_is_a_config_error_naming_the_field(sdk_bundle, tmp_path, capsys):
    """Settings that only the parts can check (a source spec, a preprocess mode) still exit 3 and name the
    field; a ValueError from anywhere else is a bug (exit 1), not reported as a configuration error."""
    cfg = tmp_path / "device.yaml"
    cfg.write_text(f"source: webcam:0\nmodel: {sdk_bundle}\nmqtt: {{enabled: false}}\n")
    code, out = run_cli(["--config", str(cfg)], capsys)
    assert code == 3 and "source: unknown frame source 'webcam:0'" in out.err
    code, out = run_cli(["bench", sdk_bundle, "--runs", "5", "--video", str(tmp_path / "none.mp4")], capsys)
    assert code == 5 and "none.mp4" in out.err


def test_usage_error_is_2(capsys):
    code, _ = run_cli(["--camera", "zero"], capsys)
    assert code == 2


def test_bench_subcommand(sdk_bundle, short_video, capsys):
    code, out = run_cli(["bench", sdk_bundle, "--runs", "50", "--video", short_video, "--json"], capsys)
    assert code == 0
    r = json.loads(out.out)
    assert r["runs"] == 50 and r["p95_ms"] >= r["p50_ms"] > 0 and r["decode"]["frames"] == 5


def test_run_without_mqtt_and_images_dir(sdk_bundle, tmp_path, mnist_dir, capsys):
    import cv2
    import numpy as np

    from sdk_bundle_fixture import load_mnist
    from train.data.videos import paper_frame

    x, y = load_mnist(mnist_dir, "test")
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), paper_frame(x[i], rng))
    (tmp_path / "zz-broken.png").write_bytes(b"garbage")
    code, out = run_cli(["--images", tmp_path, "--model", sdk_bundle, "--no-mqtt"], capsys)
    assert code == 0
    summary = json.loads(out.err.strip().splitlines()[-1])
    assert summary["frames"] == 6 and summary["ended_by"] == "source_ended"


def test_console_script_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert 'edge-classify = "sdk.cli:main"' in text


def test_device_package_never_imports_tensorflow():
    code = ("import sys, sdk, sdk.app, sdk.cli, sdk.runtime, sdk.pipeline; from sdk import run; "
            "sdk.runtime._interp.backend(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'train')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.hardware
def test_real_camera_zero(sdk_bundle, capsys):
    """Needs a camera on /dev/video0."""
    code, out = run_cli(["--camera", "0", "--model", sdk_bundle, "--no-mqtt", "--max-frames", "20"], capsys)
    assert code == 0
