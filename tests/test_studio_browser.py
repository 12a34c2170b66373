"""The studio driven as a person would: a real headless browser (Debian's chromium through
Playwright) on the real pages of ``python -m train.studio`` (a child process), a real mosquitto,
a real device (``sdk.run``: OpenCV decoding a real video of Semeion digits, LiteRT running the real
exported LeNet-5 bundle) and the real feedback store, filled by the studio's own collector.

The path: the fleet page shows the device online, then offline when it stops; 20 samples are
labelled with the keyboard (each the digit the frame shows) and exactly those labels are in the
store; a retrain is started from the page and finishes; its bundle is published from the page
to the running device, whose results then carry the new version, and the fleet page shows it;
a rollback from the page brings the old version back. Screenshots of each page go to
``$EDGECLF_SCREENSHOTS`` (``EDGECLF_SCREENSHOTS=docs/studio`` refreshes the docs' copies), else to
the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import sdk
from mqtt_fixtures import Collector, free_port, mosquitto  # noqa: F401  (fixture)
from sdk.config import Config
from train.data import load_dataset, stratified_sample
from train.data.videos import write_digit_video

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cam-7"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _device_config(bundle, video, broker, tmp_path, name, **kw) -> Config:
    return Config(device_id=DEVICE, source=f"video:{video}", model=str(bundle), loop=True, fps_cap=40,
                  mqtt={"broker": broker, "outbox_path": str(tmp_path / f"outbox-{name}.sqlite"), "reconnect_min_s": 0.2},
                  update={"store_dir": str(tmp_path / "device-models"), "public_key": str(tmp_path / "keys" / "fleet.pub")},
                  metrics_interval_s=1.0, **kw)


class Device:
    """``sdk.run`` in a thread until :meth:`stop`."""

    def __init__(self, cfg: Config):
        self.stop_event = threading.Event()
        self.out: dict = {}
        self.thread = threading.Thread(target=lambda: self.out.setdefault("stats", sdk.run(cfg, self.stop_event)),
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.out["stats"]


@pytest.fixture
def studio_env(small_run, shared_data, mosquitto, tmp_path):
    from train.export import export_bundle
    from train.loop.keys import generate_keypair

    sign_key, _, _ = generate_keypair(tmp_path / "keys" / "fleet")
    v1 = export_bundle("rpi", small_run, tmp_path / "bundle-v1", name="digits", version="1", latency_runs=5).bundle_dir
    semeion = stratified_sample(load_dataset(str(shared_data / "semeion" / "semeion.data")), 300, seed=0)
    video = write_digit_video(tmp_path / "semeion.avi", semeion.x[..., 0], seed=3)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(os.environ.get("EDGECLF_STUDIO_TOKEN_ENV", "EDGECLF_STUDIO_TOKEN"), None)
    log = open(tmp_path / "studio.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "train.studio", "--store", str(tmp_path / "feedback"), "--broker", mosquitto.address,
         "--collect", "--base", str(small_run), "--bundle", str(v1), "--runs-dir", str(tmp_path / "runs"),
         "--sign-key", str(sign_key), "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/api/fleet", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"the studio did not start (exit {proc.poll()}):\n{(tmp_path / 'studio.log').read_text()}")
            time.sleep(0.3)
    (tmp_path / "runs").mkdir(exist_ok=True)
    yield {"url": url, "v1": v1, "video": video, "truth": semeion.y, "broker": mosquitto, "store": tmp_path / "feedback"}
    proc.terminate()
    try:
        assert proc.wait(20) == 0, (tmp_path / "studio.log").read_text()
    finally:
        proc.kill()
        log.close()


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install chromium; the README test command and .ci/run do)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _shots(tmp_path) -> Path:
    out = Path(os.environ.get("EDGECLF_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _store_rows(store: Path) -> list[dict]:
    import sqlite3

    db = sqlite3.connect(f"file:{store / 'index.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT id, frame_id, status, label, labelled_by FROM samples ORDER BY id")]
    finally:
        db.close()


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def test_a_person_runs_the_loop_from_the_studio(studio_env, browser, tmp_path):
    from playwright.sync_api import expect

    env, shots = studio_env, _shots(tmp_path)
    truth = env["truth"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # 1. Fleet: the device comes online (live, no reload), then goes offline when it stops.
    page.goto(env["url"] + "/fleet")
    expect(page.locator("#fleet-connection")).to_contain_text("connected to")
    sampling = {"enabled": True, "min_confidence": 0.9, "min_margin": 0.5, "max_entropy": 0.3, "audit_fraction": 0.1,
                "per_minute": 100000, "per_hour": 100000, "dedup_distance": 0, "image_format": "png"}
    device = Device(_device_config(env["v1"], env["video"], env["broker"].address, tmp_path, "a", sampling=sampling))
    row = page.locator(f'#fleet tr[data-device="{DEVICE}"]')
    expect(row.locator(".state")).to_have_text("online")
    expect(row.locator(".version")).to_have_text("1")
    _wait(lambda: sum(r["status"] == "pending" for r in _store_rows(env["store"])) >= 40, 60, "40 stored samples")
    page.screenshot(path=str(shots / "fleet.png"))
    stats = device.stop()
    t_stop = time.monotonic()
    expect(row.locator(".state")).to_have_text("offline", timeout=10_000)
    offline_after_s = time.monotonic() - t_stop
    assert stats.samples >= 40 and stats.ended_by == "stopped", stats

    # 2. Samples: 20 labelled with the keyboard, each with the digit its frame shows.
    page.goto(env["url"] + "/samples?order=oldest")
    cards = page.locator(".card")
    expect(cards.first).to_be_visible()
    assert cards.count() >= 21
    frame_of = {r["id"]: r["frame_id"] for r in _store_rows(env["store"])}
    given: dict[int, str] = {}
    t0 = time.monotonic()
    for _ in range(20):
        focused = page.locator(".card.focused")
        sid = int(focused.get_attribute("data-id"))
        digit = str(truth[frame_of[sid] % len(truth)])
        page.keyboard.press(digit)
        given[sid] = digit
        expect(page.locator(f'.card[data-id="{sid}"]')).to_have_attribute("data-status", "labelled")
    _wait(lambda: sum(r["status"] == "labelled" for r in _store_rows(env["store"])) == 20, 10, "20 labels in the store")
    label_s = time.monotonic() - t0
    # undo: a wrong key on the 21st, then u, leaves it pending and the 20 untouched
    wrong_id = int(page.locator(".card.focused").get_attribute("data-id"))
    page.keyboard.press("0" if truth[frame_of[wrong_id] % len(truth)] != 0 else "1")
    expect(page.locator(f'.card[data-id="{wrong_id}"]')).to_have_attribute("data-status", "labelled")
    page.keyboard.press("u")
    expect(page.locator(f'.card[data-id="{wrong_id}"]')).to_have_attribute("data-status", "pending")
    page.screenshot(path=str(shots / "samples.png"))
    rows = {r["id"]: r for r in _store_rows(env["store"])}
    labelled = {i: r["label"] for i, r in rows.items() if r["status"] == "labelled"}
    assert labelled == given, "the store holds other labels than the keys pressed"
    assert rows[wrong_id]["status"] == "pending" and rows[wrong_id]["label"] is None
    assert {rows[i]["labelled_by"] for i in given} == {"studio"}
    print(f"20 labels in {label_s:.1f} s ({label_s / 20 * 1000:.0f} ms each); offline shown {offline_after_s:.1f} s after the stop")

    # 3. Retrain from the page; the job page shows progress, then before/after.
    page.goto(env["url"] + "/retrain")
    page.fill('input[name="epochs"]', "2")
    page.click("#retrain-start")
    page.wait_for_url("**/jobs/*")
    job_url = page.url
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=300_000)
    expect(page.locator("#before-after")).to_be_visible()
    bundle = page.locator("#job-bundle").inner_text()
    new_version = json.loads((Path(bundle) / "manifest.json").read_text())["version"]
    assert new_version != "1"
    page.screenshot(path=str(shots / "retrain-job.png"), full_page=True)

    # 4. Publish it (signed) from the page to the running device; its results carry the new version.
    results = Collector(env["broker"].port, (f"edge/v1/{DEVICE}/result",))
    assert results.wait_subscribed(10)
    device = Device(_device_config(env["v1"], env["video"], env["broker"].address, tmp_path, "b",
                                   sampling={"enabled": False}))
    try:
        page.goto(env["url"] + "/fleet")
        expect(row.locator(".state")).to_have_text("online")
        page.goto(job_url)
        page.select_option('#publish-form select[name="target"]', DEVICE)
        page.click("#publish-start")
        page.wait_for_url("**/jobs/*")
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=90_000)
        expect(page.locator("#job-outcomes")).to_contain_text(f"{DEVICE}: applied (version {new_version}")
        page.screenshot(path=str(shots / "publish-job.png"))
        assert results.wait_for(lambda c: any(json.loads(p)["model"]["version"] == new_version
                                              for p in c.on("/result")), timeout=30)
        page.goto(env["url"] + "/fleet")
        expect(row.locator(".version")).to_have_text(new_version)
        expect(row.locator(".update")).to_contain_text(f"applied {new_version}")
        page.screenshot(path=str(shots / "fleet-updated.png"))

        # 5. Roll back from the page: the device returns to version 1.
        page.goto(env["url"] + "/retrain")
        page.select_option('#rollback-form select[name="target"]', DEVICE)
        page.click('#rollback-form button[type="submit"]')
        page.wait_for_url("**/jobs/*")
        expect(page.locator("#job-outcomes")).to_contain_text(f"{DEVICE}: rolled_back (version 1", timeout=60_000)
        page.goto(env["url"] + "/fleet")
        expect(row.locator(".version")).to_have_text("1")
    finally:
        device.stop()
        results.close()
    seqs = [json.loads(p)["seq"] for p in results.on("/result")]
    assert seqs == list(range(len(seqs))), "the swap lost or repeated a result"

    # 5. Reports: the base run's report is served and linked from the reports page.
    page.goto(env["url"] + "/runs")
    page.screenshot(path=str(shots / "reports.png"))
    assert not errors, errors
