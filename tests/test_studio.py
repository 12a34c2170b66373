"""The studio's HTTP contract, request by request (FastAPI's TestClient on the real app and a real
feedback store of real MNIST digits): who may use it, what a state-changing request must carry,
what bad input gets, and that the store is never half-written. ``test_studio_browser.py`` drives
the same pages in a real browser.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from sdk import messages
from train.loop.store import FeedbackError, FeedbackStore
from train.web.app import StudioSettings, _label_keys, create_app
from train.web.security import CSRF_COOKIE, Guard, StudioSecurityError

ROOT = Path(__file__).resolve().parents[1]
LABELS = [str(i) for i in range(10)]
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def digits(distinct_digits):
    return distinct_digits


def payload(img: np.ndarray, guess: int, i: int, *, device: str = "cam1", version: str = "3",
            reasons: tuple[str, ...] = ("low_confidence",), score: float = 0.48) -> dict:
    png = cv2.imencode(".png", img)[1].tobytes()
    other = (guess + 3) % 10
    return messages.sample(
        device=device, seq=i, run_id="run1", ts=1795318626.0 + i, frame_id=i,
        model={"name": "lenet5-mnist", "version": version, "sha256": "ab" * 32}, reasons=list(reasons),
        top_k=[{"label": str(guess), "index": guess, "score": score},
               {"label": str(other), "index": other, "score": 0.3}],
        scores=[score if k == guess else 0.3 if k == other else (0.7 - score) / 8 for k in range(10)],
        stats={"confidence": score, "margin": score - 0.3, "entropy": 0.55}, image=png, image_format="png",
        width=28, height=28, model_input=messages.image_field(png, "png", 28, 28, colour="grey"))


@pytest.fixture
def store(digits, tmp_path):
    """20 samples of distinct digits: cam1 v3 (ids 1-10, 'low_confidence'), cam2 v4 (ids 11-20, 'random_audit')."""
    x, y = digits
    s = FeedbackStore(tmp_path / "feedback", labels=LABELS)
    for i in range(20):
        cam2 = i >= 10
        assert s.add(payload(x[i], int(y[i]), i, device="cam2" if cam2 else "cam1", version="4" if cam2 else "3",
                             reasons=("random_audit",) if cam2 else ("low_confidence",),
                             score=round(0.9 - 0.02 * (i * 7 % 20), 2))) == i + 1
    yield s
    s.close()


def client_for(store: FeedbackStore, guard: Guard | None = None, **settings) -> TestClient:
    app = create_app(StudioSettings(store=store.path, **settings), guard or Guard("127.0.0.1"), store=store)
    return TestClient(app, base_url="http://127.0.0.1:8765")


def csrf(client: TestClient) -> dict[str, str]:
    """What the page's script sends: the CSRF cookie's value in the header (a GET sets the cookie)."""
    client.get("/fleet")
    return {"X-CSRF-Token": client.cookies[CSRF_COOKIE]}


def row(store: FeedbackStore, sample_id: int) -> tuple:
    s = store.get(sample_id)
    return s.status, s.label


# -- who may use it ---------------------------------------------------------------------------
def test_a_public_address_needs_a_password_from_the_environment(tmp_path):
    with pytest.raises(StudioSecurityError, match="EDGECLF_STUDIO_TOKEN"):
        Guard("0.0.0.0")
    with pytest.raises(StudioSecurityError, match="at least 8"):
        Guard("0.0.0.0", "short")
    Guard("0.0.0.0", PASSWORD)
    Guard("::1")  # loopback, IPv6
    env = {k: v for k, v in __import__("os").environ.items() if k != "EDGECLF_STUDIO_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "train.studio", "--store", str(tmp_path / "fb"), "--host", "0.0.0.0"],
                       capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 2, r.stderr  # ExitCode.USAGE
    assert "EDGECLF_STUDIO_TOKEN" in r.stderr and "--host 0.0.0.0" in r.stderr
    assert not (tmp_path / "fb").exists()  # refused before touching anything


def test_with_a_password_every_page_and_call_needs_a_session_or_the_bearer(store):
    client = client_for(store, Guard("0.0.0.0", PASSWORD))
    r = client.get("/samples?status=all", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fsamples"
    assert client.get("/api/samples").status_code == 401
    assert client.get("/samples/1/frame", follow_redirects=False).status_code == 303
    assert client.post("/api/samples/1/label", json={"label": "7"}, headers=csrf(client)).status_code == 401
    assert row(store, 1) == ("pending", None)

    assert client.get("/api/samples", headers={"Authorization": "Bearer wrong-password"}).status_code == 401
    assert client.get("/api/samples", headers={"Authorization": f"Bearer {PASSWORD}"}).json()["total"] == 20

    token = csrf(client)["X-CSRF-Token"]
    bad = client.post("/login", data={"password": "wrong-password", "csrf": token, "next": "/samples"},
                      follow_redirects=False)
    assert bad.status_code == 401 and "edgeclf_session" not in client.cookies
    no_csrf = client.post("/login", data={"password": PASSWORD, "next": "/samples"}, follow_redirects=False)
    assert no_csrf.status_code == 403 and "edgeclf_session" not in client.cookies
    ok = client.post("/login", data={"password": PASSWORD, "csrf": token, "next": "//evil.example/x"},
                     follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/fleet"  # never an open redirect
    assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
    assert client.get("/samples").status_code == 200
    assert client.post("/api/samples/1/label", json={"label": "7"}, headers={"X-CSRF-Token": token}).status_code == 200
    assert row(store, 1) == ("labelled", "7")

    assert client.post("/api/logout", headers={"X-CSRF-Token": token}).status_code == 200
    client.cookies.pop("edgeclf_session", None)
    assert client.get("/api/samples").status_code == 401


def test_state_changes_need_the_csrf_token_and_this_origin(store):
    client = client_for(store)
    token = csrf(client)["X-CSRF-Token"]
    assert client.post("/api/samples/2/label", json={"label": "1"}).status_code == 403
    wrong = client.post("/api/samples/2/label", json={"label": "1"}, headers={"X-CSRF-Token": "x" * 43})
    assert wrong.status_code == 403 and "CSRF" in wrong.json()["error"]
    evil = client.post("/api/samples/2/label", json={"label": "1"},
                       headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert evil.status_code == 403 and "evil.example" in evil.json()["error"]
    assert client.post("/api/samples/2/skip", headers={"X-CSRF-Token": token, "Origin": "null"}).status_code == 403
    assert row(store, 2) == ("pending", None)
    ok = client.post("/api/samples/2/label", json={"label": "1"},
                     headers={"X-CSRF-Token": token, "Origin": "http://127.0.0.1:8765"})
    assert ok.status_code == 200 and ok.json()["before"]["status"] == "pending"
    assert row(store, 2) == ("labelled", "1")


def test_a_loopback_studio_serves_loopback_host_names_only(store):
    client = client_for(store, Guard("127.0.0.1", allowed_hosts=("studio.tunnel",)))
    assert client.get("/api/fleet", headers={"Host": "rebind.evil.example:8765"}).status_code == 400
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "studio.tunnel"):
        assert client.get("/api/fleet", headers={"Host": host}).status_code == 200, host
    page = client.get("/fleet")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


# -- bad input: a clear message and an HTTP code; nothing half-written ---------------------------
def test_bad_input_is_named_and_changes_nothing(store):
    client = client_for(store)
    h = csrf(client)
    r = client.post("/api/samples/3/label", json={"label": "seven"}, headers=h)
    assert r.status_code == 400 and r.json()["error"] == f"unknown label 'seven'; valid: {', '.join(LABELS)}"
    r = client.post("/api/samples/999/label", json={"label": "7"}, headers=h)
    assert r.status_code == 404 and "no sample with id 999" in r.json()["error"]
    page = client.get("/samples/999/frame")
    assert page.status_code == 404 and "no sample with id 999" in page.text and "<html" in page.text.lower()
    r = client.post("/api/samples/3/label", content=b"{not json", headers=h)
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    for query, words in (("status=done", "valid: all, pending, labelled, skipped"),
                         ("order=best", "valid: newest, oldest, uncertain"),
                         ("reason=sharpness", "valid: low_confidence, small_margin, high_entropy, random_audit"),
                         ("page=two", "page must be a whole number")):
        api = client.get(f"/api/samples?{query}")
        assert api.status_code == 400 and words in api.json()["error"], query
        html = client.get(f"/samples?{query}")
        assert html.status_code == 400 and words in html.text, query
    # bulk: one unknown id or an unknown label, and none of them is labelled
    r = client.post("/api/samples/bulk", json={"ids": [3, 4, 999], "label": "7"}, headers=h)
    assert r.status_code == 404 and "999" in r.json()["error"]
    r = client.post("/api/samples/bulk", json={"ids": [3, 4], "label": "seven"}, headers=h)
    assert r.status_code == 400 and "valid: 0, 1" in r.json()["error"]
    r = client.post("/api/samples/bulk", json={"ids": [3, True], "label": "7"}, headers=h)
    assert r.status_code == 400 and "'ids'" in r.json()["error"]
    assert [row(store, i) for i in (3, 4)] == [("pending", None)] * 2
    with pytest.raises(FeedbackError, match="no sample with id 999 .*nothing was labelled"):
        store.set_labels([3, 4, 999], "7")  # the store's own all-or-none, under the API's check
    assert [row(store, i) for i in (3, 4)] == [("pending", None)] * 2
    assert store.counts()["labelled"] == 0
    # what the pages need to work without a broker or a base run is said, not crashed on
    assert "--broker" in client.get("/api/fleet").json()["error"]
    r = client.post("/api/retrain", json={"epochs": 2}, headers=h)
    assert r.status_code == 409 and "--base RUN" in r.json()["error"]
    r = client.post("/api/rollback", json={"fleet": True}, headers=h)
    assert r.status_code == 409 and "--sign-key" in r.json()["error"] and "--broker" in r.json()["error"]


def test_the_studio_refuses_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    r = subprocess.run([sys.executable, "-m", "train.studio", "--store", str(tmp_path / "photos")],
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 5, r.stderr  # ExitCode.INPUT
    assert f"--store {tmp_path / 'photos'}: not a feedback store (no index.sqlite in it)" in r.stderr
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]  # nothing written into it


# -- the gallery and labelling -------------------------------------------------------------------
def test_gallery_filters_orders_and_pages(store):
    client = client_for(store)
    everything = client.get("/api/samples?status=all&order=oldest").json()
    assert everything["total"] == 20 and [s["id"] for s in everything["samples"]] == list(range(1, 21))
    assert [s["id"] for s in client.get("/api/samples").json()["samples"]] == list(range(20, 0, -1))  # newest first
    uncertain = client.get("/api/samples?order=uncertain").json()["samples"]
    scores = {i + 1: round(0.9 - 0.02 * (i * 7 % 20), 2) for i in range(20)}
    assert [s["id"] for s in uncertain] == sorted(scores, key=lambda i: scores[i])  # least sure first
    assert [s["score"] for s in uncertain] == sorted(scores.values())
    cam2 = client.get("/api/samples?device=cam2&model_version=4&reason=random_audit").json()
    assert cam2["total"] == 10 and {s["device"] for s in cam2["samples"]} == {"cam2"}
    assert client.get("/api/samples?device=cam1&reason=random_audit").json()["total"] == 0
    first = everything["samples"][0]
    predicted = client.get(f"/api/samples?predicted={first['predicted']}&status=all").json()
    assert predicted["total"] == sum(s["predicted"] == first["predicted"] for s in everything["samples"])
    assert store.facets() == {"devices": ["cam1", "cam2"], "model_versions": ["3", "4"],
                              "reasons": ["low_confidence", "random_audit"],
                              "predicted": sorted({s["predicted"] for s in everything["samples"]})}
    samples, total = store.query(status=None, order="oldest", limit=7, offset=14)
    assert total == 20 and [s.id for s in samples] == list(range(15, 21))
    # every card shows the model input and the frame, served as the PNGs the device sent
    img = client.get(first["input"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(img.content, np.uint8), cv2.IMREAD_UNCHANGED).shape == (28, 28)
    page = client.get("/samples?device=cam1")
    assert page.status_code == 200 and page.text.count('class="card ') == 10


def test_label_skip_undo_and_bulk_near_duplicates(store, digits):
    x, y = digits
    client = client_for(store)
    h = csrf(client)
    assert client.post("/api/samples/5/label", json={"label": str(y[4])}, headers=h).json()["after"] == \
        {"id": 5, "status": "labelled", "label": str(y[4])}
    assert client.post("/api/samples/6/skip", headers=h).json()["after"]["status"] == "skipped"
    # undo puts back exactly what the answer's 'before' said
    assert client.post("/api/samples/6/restore", json={"status": "pending"}, headers=h).status_code == 200
    assert client.post("/api/samples/5/restore", json={"status": "pending"}, headers=h).status_code == 200
    assert [row(store, i) for i in (5, 6)] == [("pending", None)] * 2
    r = client.post("/api/samples/5/restore", json={"status": "labelled", "label": "ten"}, headers=h)
    assert r.status_code == 400 and "unknown label 'ten'" in r.json()["error"]
    # near-duplicates: the same digit seen again with sensor noise (kept: intake dedup off) is found,
    # the other digits (all more than 8 bits apart) are not
    store.dedup_distance = -1
    rng = np.random.default_rng(0)
    ids = []
    for k in range(3):
        noisy = np.clip(x[7].astype(np.int16) + rng.integers(-12, 13, x[7].shape), 0, 255).astype(np.uint8)
        ids.append(store.add(payload(noisy, int(y[7]), 100 + k, score=0.5)))
    assert ids == [21, 22, 23]
    found = client.get("/api/samples/8/similar?distance=8").json()["ids"]
    assert found[0] == 8 and sorted(found[1:]) == ids
    assert client.get("/api/samples/8/similar?distance=99").status_code == 400
    n = client.post("/api/samples/bulk", json={"ids": found, "label": str(y[7])}, headers=h).json()["labelled"]
    assert n == len(found) and all(row(store, i) == ("labelled", str(y[7])) for i in found)
    assert store.counts()["labelled"] == len(found)


def test_label_keys_are_digits_and_first_letters():
    assert _label_keys(["open", "closed"]) == {"0": "open", "1": "closed", "o": "open", "c": "closed"}
    # 's' selects near-duplicates and 'u' undoes: no first letters when they would collide
    assert _label_keys(["open", "shut"]) == {"0": "open", "1": "shut"}
    assert _label_keys(["car", "cat"]) == {"0": "car", "1": "cat"}
    many = [f"{c}part" for c in "abcdefghijk"]
    assert _label_keys(many) == {c: f"{c}part" for c in "abcdefghijk"}


def test_labelling_while_a_collector_process_writes(store, digits, tmp_path):
    """The store's single-writer rule holds across processes: while a collector (another process, its
    own SQLite connection, fsyncing every sample) adds 40 samples, the studio labels samples 1-10 over
    and over; every label call succeeds, and every sample and label of both is there at the end."""
    x, y = digits
    np.savez(tmp_path / "more.npz", x=x[20:60], y=y[20:60])
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from test_studio import payload
        from train.loop.store import FeedbackStore
        d = np.load({str(tmp_path / 'more.npz')!r})
        s = FeedbackStore({str(store.path)!r})
        print("ready", flush=True)
        ids = [s.add(payload(img, int(lab), 1000 + i, device="cam3")) for i, (img, lab) in enumerate(zip(d["x"], d["y"]))]
        assert None not in ids, ids
        print(len(ids))
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
    client = client_for(store)
    h = csrf(client)
    calls, rounds = 0, 0
    while writer.poll() is None or rounds == 0:
        for i in range(1, 11):
            label = str(y[i - 1]) if rounds % 2 == 0 else str((y[i - 1] + 1) % 10)
            r = client.post(f"/api/samples/{i}/label", json={"label": label}, headers=h)
            assert r.status_code == 200, r.text
            calls += 1
        rounds += 1
    if rounds % 2 == 0:  # the last round (index rounds - 1) gave the wrong labels: end on the true ones
        for i in range(1, 11):
            assert client.post(f"/api/samples/{i}/label", json={"label": str(y[i - 1])}, headers=h).status_code == 200
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert out.strip() == "40" and calls >= 10
    assert [row(store, i) for i in range(1, 11)] == [("labelled", str(y[i])) for i in range(10)]
    counts = store.counts()
    assert (counts["total"], counts["labelled"], counts["pending"]) == (60, 10, 50)
    assert client.get("/api/samples?device=cam3").json()["total"] == 40


# -- reports ---------------------------------------------------------------------------------------
def test_run_reports_are_served_and_nothing_outside_them(store, tmp_path):
    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "run.json").write_text("{}")
    (runs / "r1" / "report.html").write_text("<html><body>the report</body></html>")
    (tmp_path / "secret.txt").write_text("not yours")
    client = client_for(store, runs_dir=runs)
    assert "the report" in client.get("/runs/r1/report.html").text
    assert 'href="/runs/r1/report.html"' in client.get("/runs").text
    assert client.get("/runs/r1/report.html").headers["content-security-policy"].startswith("default-src 'none'")
    for path in ("/runs/r1/../../secret.txt", "/runs/r1/%2e%2e/%2e%2e/secret.txt", "/runs/..%2Fsecret.txt/x",
                 "/runs/r2/report.html"):
        r = client.get(path)
        assert r.status_code == 404 and "not yours" not in r.text, path


# -- bootstrap: a dataset started from capture mode ---------------------------------------------
def capture(frame: np.ndarray, i: int, box: tuple[int, int, int, int]) -> dict:
    """A capture-mode sample taken without a model: the frame, one named region, no scores."""
    png = cv2.imencode(".png", frame)[1].tobytes()
    return messages.sample(
        device="door-cam", seq=i, run_id="boot", ts=1795318626.0 + 5 * i, frame_id=5 * i, model=None,
        reasons=["capture"], top_k=[], scores=[], stats={"confidence": None, "margin": None, "entropy": None},
        image=png, image_format="png", width=frame.shape[1], height=frame.shape[0],
        region={"name": "door", "box": list(box)})


def door_frames(digits, n: int) -> list[tuple[np.ndarray, str]]:
    """Colour 96x64 frames of a cluttered scene whose 'door' region (x 40, y 12, 28x28) shows a real
    MNIST 0 ('closed') or 1 ('open'), tinted; the clutter around it changes every frame."""
    x, y = digits
    rng = np.random.default_rng(1)
    picked = [i for i in range(len(y)) if y[i] in (0, 1)][:n]
    out = []
    for i in picked:
        frame = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        frame[12:40, 40:68] = (x[i][..., None] * np.array([0.9, 0.7, 0.4])).astype(np.uint8)
        out.append((frame, "closed" if y[i] == 0 else "open"))
    return out


def test_snapshot_of_a_store_refuses_too_few_labels(digits, tmp_path):
    from train.config import TrainConfig
    from train.errors import InputError
    from train.train import snapshot_feedback

    store = FeedbackStore(tmp_path / "boot")
    frames = door_frames(digits, 6)
    for i, (frame, _) in enumerate(frames):
        assert store.add(capture(frame, i, (40, 12, 28, 28))) == i + 1
    config = TrainConfig(data=str(store.path))
    with pytest.raises(InputError, match="no classes yet; define them in the studio"):
        snapshot_feedback(config)
    store.set_label_names(["closed", "open"])
    store.set_label(1, frames[0][1])
    with pytest.raises(InputError, match=r"at least 2 labelled samples; too few: closed \(\d\), open \(\d\)"):
        snapshot_feedback(config)
    assert not (store.path / "snapshots").exists()
    assert snapshot_feedback(TrainConfig(data="mnist")).data == "mnist"  # anything else passes through
    store.close()


@pytest.mark.slow
def test_a_first_model_from_captured_frames(digits, tmp_path):
    """Capture samples (no model) -> classes defined and frames labelled in the studio -> a first
    model trained on the region crops and exported, all from the studio's API."""
    store = FeedbackStore(tmp_path / "boot")
    frames = door_frames(digits, 40)  # every distinct 0 and 1: about 20
    assert len(frames) >= 16
    for i, (frame, _) in enumerate(frames):
        assert store.add(capture(frame, i, (40, 12, 28, 28))) == i + 1
    client = client_for(store, runs_dir=tmp_path / "runs")
    h = csrf(client)
    assert "Define the classes" in client.get("/samples").text
    card = client.get("/api/samples?order=oldest").json()["samples"][0]
    assert (card["input"], card["model_version"], card["top_k"]) == ("/samples/1/region", "", [])
    region = cv2.imdecode(np.frombuffer(client.get(card["input"]).content, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(region, frames[0][0][12:40, 40:68])  # the door, cut from the frame
    assert client.get("/samples/1/input").status_code == 404  # no model, no model input
    assert client.get("/api/samples?reason=capture").json()["total"] == len(frames)
    r = client.post("/api/train", json={"epochs": 1}, headers=h)
    assert r.status_code == 409 and "define the classes first" in r.json()["error"]
    # the user's order, not the alphabet's: the model's outputs follow it
    r = client.post("/api/labels", json={"labels": ["open", "closed"]}, headers=h)
    assert r.status_code == 200 and r.json()["keys"] == {"0": "open", "1": "closed", "o": "open", "c": "closed"}
    r = client.post("/api/labels", json={"labels": ["closed", "open"]}, headers=h)
    assert r.status_code == 409 and "only be added after them" in r.json()["error"]
    assert client.post("/api/labels", json={"labels": ["open", "closed", "a/b"]}, headers=h).status_code == 400
    assert store.labels() == ["open", "closed"]
    for sid, (_, label) in enumerate(frames, start=1):
        assert client.post(f"/api/samples/{sid}/label", json={"label": label}, headers=h).status_code == 200
    assert client.post("/api/train", json={"model": "vgg99"}, headers=h).json()["error"].startswith(
        "unknown model 'vgg99'; valid: fast_cnn")
    r = client.post("/api/train", json={"model": "fast_cnn", "epochs": 2, "image_size": [32, 32], "target": "cpu"},
                    headers=h)
    assert r.status_code == 200, r.text
    job_id = r.json()["job"]["id"]
    deadline = time.monotonic() + 300
    while (job := client.get(f"/api/jobs/{job_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, job["log"][-5:]
        time.sleep(1)
    assert job["status"] == "succeeded", job["error"] or job["log"][-20:]
    assert job["epochs"] == 2
    run = Path(job["result"]["run_dir"])
    config = json.loads((run / "config.json").read_text())
    snapshot = Path(config["data"])
    assert snapshot.parent == store.path / "snapshots"  # a dataset version, not the live store
    assert (snapshot / "labels.txt").read_text() == "open\nclosed\n"
    counts = {c: len(list((snapshot / c).iterdir())) for c in ("closed", "open")}
    assert counts == {c: sum(label == c for _, label in frames) for c in ("closed", "open")}
    crop = cv2.imread(str(next((snapshot / "open").iterdir())), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (28, 28, 3)  # the region, not the frame
    manifest = json.loads((Path(job["result"]["bundle"]) / "manifest.json").read_text())
    assert manifest["labels"] == ["open", "closed"] and manifest["target"] == "cpu"
    assert manifest["input"]["shape"][1:] == [32, 32, 3]
    page = client.get(f"/jobs/{job_id}").text
    assert "The new model" in page and 'id="publish-section"' in page


def test_a_snapshot_loads_in_the_stores_class_order_whatever_the_class_names(tmp_path, caplog):
    """labels.txt (what an export writes) orders the classes, even classes called like split folders;
    another tool's labels.txt that does not name the folders is ignored, with a warning."""
    from train.data import load_dataset

    snap = tmp_path / "snap"
    for cls, n in (("valid", 3), ("defect", 2)):
        (snap / cls).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(snap / cls / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    (snap / "labels.txt").write_text("valid\ndefect\n")
    ds = load_dataset(str(snap))
    assert ds.class_names == ["valid", "defect"] and sorted(ds.y.tolist()) == [0, 0, 0, 1, 1]
    (snap / "labels.txt").write_text("0 defect\n1 valid\n")  # Coral's format
    with pytest.raises(Exception, match="mixes split folders"):
        load_dataset(str(snap))  # without a usable labels.txt, 'valid' is a split folder again
    other = tmp_path / "other"
    for cls in ("cat", "dog"):
        (other / cls).mkdir(parents=True)
        cv2.imwrite(str(other / cls / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (other / "labels.txt").write_text("0 cat\n1 dog\n")
    assert load_dataset(str(other)).class_names == ["cat", "dog"]
    assert "does not name the class folder(s) cat, dog; ignored" in caplog.text


def test_a_job_that_cannot_start_fails_and_frees_the_slot(tmp_path):
    from train.web.jobs import Jobs

    jobs = Jobs(python=str(tmp_path / "no-such-python"))
    job = jobs.start_retrain(["--help"], tmp_path / "run", "retrain")
    deadline = time.monotonic() + 10
    while job.status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.status == "failed" and "FileNotFoundError" in job.error and job.ended is not None
    assert jobs.start_retrain(["--help"], tmp_path / "run", "again") is not None  # no stale 'running' job


def test_the_studio_stops_promptly_with_a_fleet_page_open(tmp_path):
    """SIGTERM with a browser's event stream open: the server stops within seconds, not when the tab closes."""
    import signal
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "train.studio", "--store", str(tmp_path / "fb"), "--port", str(port),
                             "-q"], env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/fleet/events", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.2)
        assert stream.readline().startswith(b"data: ")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5
        stream.close()
    finally:
        if proc.poll() is None:
            proc.kill()
