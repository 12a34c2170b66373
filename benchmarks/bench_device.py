"""Device benchmark: end-to-end fps with publishing to a local mosquitto, next to the decode-only
and interpreter-only rates of the same video and model in the same run; peak RSS of the device
process (which never imports TensorFlow); time from start to the first published result.

    python benchmarks/bench_device.py [--bundle DIR] [--frames 600]

Prints a table and writes benchmarks/results/device.json. Without --bundle, the small INT8
MNIST bundle of the tests is built (TensorFlow, in a separate process) or reused from
the cache (EDGECLF_BENCH_CACHE, default ~/.cache/edgeclf/bench-device).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from mqtt_fixtures import Broker, Collector  # noqa: E402
from sdk.bench import bench_decode, bench_interpreter  # noqa: E402

SHARED = Path(os.environ.get("EDGECLF_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("EDGECLF_BENCH_CACHE", Path.home() / ".cache" / "edgeclf" / "bench-device"))


def ensure_bundle(path: Path | None) -> Path:
    if path:
        return path
    out = CACHE / "bundle"
    code = ("import sys; from pathlib import Path; sys.path[:0]=['tests', '.']; "
            "from sdk_bundle_fixture import cached_bundle; "
            f"print(cached_bundle(Path({str(out)!r}), Path({str(SHARED / 'mnist')!r})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return Path(r.stdout.strip().splitlines()[-1])


def ensure_video(frames: int, workdir: Path) -> Path:
    from sdk_bundle_fixture import load_mnist
    from train.data.videos import write_digit_video

    video = workdir / f"paper-digits-640x480-{frames}.avi"
    if not video.exists():
        x, _ = load_mnist(SHARED / "mnist", "test")
        write_digit_video(video, x[:frames], fps=30, size=(640, 480), seed=1)
    return video


def bench_classify(bundle: Path, video: Path, n: int = 300) -> dict:
    """Preprocess (digit mode, from the manifest) + interpreter on decoded frames held in memory."""
    import cv2

    from sdk.pipeline import Classifier
    from sdk.runtime import load_bundle

    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    clf = Classifier(load_bundle(bundle))
    for f in frames[:20]:  # warm-up
        clf.classify(f)
    t = time.perf_counter()
    for f in frames:
        clf.classify(f)
    dt = time.perf_counter() - t
    return {"frames": len(frames), "fps": round(len(frames) / dt, 1), "mean_ms": round(dt / len(frames) * 1e3, 3)}


def run_device(bundle: Path, video: Path, broker: Broker, workdir: Path, frames: int) -> dict:
    outbox = workdir / "outbox.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(outbox) + suffix).unlink(missing_ok=True)
    col = Collector(broker.port, ("edge/v1/bench/result",))
    col.wait_subscribed()
    cmd = [sys.executable, "-m", "sdk.cli", "--video", str(video), "--model", str(bundle), "--broker", broker.address,
           "--device-id", "bench", "--outbox", str(outbox), "--top-k", "3", "-q"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first, hwm_kb = None, 0
    status_file = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        if first is None and col.on("/result"):
            first = time.monotonic() - t0
        try:  # VmHWM: peak RSS of the process's own memory (reset by exec, unlike ru_maxrss after fork)
            for line in status_file.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm_kb = max(hwm_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.002 if first is None else 0.01)
    err = proc.stderr.read()
    wall = time.monotonic() - t0
    col.wait_for(lambda c: len(c.on("/result")) >= frames, 30)
    summary = json.loads(err.strip().splitlines()[-1])
    got = {json.loads(p)["seq"] for p in col.on("/result")}
    col.close()
    return {"exit_code": proc.returncode, "frames": summary["frames"], "fps": summary["fps"],
            "results_received": len(got), "all_seqs_received": got == set(range(summary["frames"])),
            "first_result_s": round(first, 3) if first is not None else None, "process_wall_s": round(wall, 3),
            "peak_rss_mb": round(hwm_kb / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=3, help="end-to-end runs; the best is reported")
    a = ap.parse_args()
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    bundle = ensure_bundle(a.bundle)
    video = ensure_video(a.frames, work)
    decode = bench_decode(video)
    interp = bench_interpreter(bundle, runs=2000)
    classify_only = bench_classify(bundle, video)
    broker = Broker(work / "broker").start()
    try:
        runs = [run_device(bundle, video, broker, work, a.frames) for _ in range(a.repeat)]
    finally:
        broker.stop()
    best = max(runs, key=lambda r: r["fps"])
    limit = min(decode["fps"], interp["fps"])
    out = {
        "command": "python benchmarks/bench_device.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "model": {"name": interp["model"], "version": interp["version"], "bundle": str(bundle)},
        "video": {"path": video.name, "size": "640x480", "frames": a.frames, "codec": "MJPG"},
        "decode_only_fps": decode["fps"],
        "interpreter_only": {k: interp[k] for k in ("fps", "p50_ms", "p95_ms", "runs")},
        "classify_only": classify_only,
        "ratio_e2e_to_classify_only": round(best["fps"] / classify_only["fps"], 3),
        "end_to_end": best,
        "end_to_end_runs": runs,
        "ratio_e2e_to_limit": round(best["fps"] / limit, 3),
        "limit": "decode" if decode["fps"] <= interp["fps"] else "interpreter",
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "first_result_s": min(r["first_result_s"] for r in runs if r["first_result_s"] is not None),
        "aims": {"ratio": ">= 0.8", "peak_rss_mb": "<= 150", "first_result_s": "<= 2"},
    }
    dest = REPO / "benchmarks" / "results" / "device.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"decode only          {decode['fps']:8.1f} fps  ({video.name})")
    print(f"interpreter only     {interp['fps']:8.1f} inf/s (p50 {interp['p50_ms']:.3f} ms, p95 {interp['p95_ms']:.3f} ms)")
    print(f"preprocess+interp.   {classify_only['fps']:8.1f} fps  (digit mode from the manifest, frames in memory)")
    print(f"end to end + MQTT    {best['fps']:8.1f} fps  ({best['results_received']}/{best['frames']} results received, "
          f"all seqs: {best['all_seqs_received']})")
    print(f"ratio e2e / {out['limit']:<11} {out['ratio_e2e_to_limit']:8.3f}   (aim >= 0.8)")
    print(f"ratio e2e / classify {out['ratio_e2e_to_classify_only']:8.3f}")
    print(f"peak RSS             {out['peak_rss_mb']:8.1f} MB   (aim <= 150)")
    print(f"start -> 1st result  {out['first_result_s']:8.3f} s    (aim <= 2)")
    print(f"wrote {dest.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
