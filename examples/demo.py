"""The main job, end to end, on the sample shipped in the repo (works offline, no services):

    python examples/demo.py

1. trains LeNet-5 on ``examples/mnist_sample.npz`` (3,000 MNIST training digits; the 1,000 test
   digits are held out) with ``train.train`` and writes its evaluation report;
2. exports it with ``train.export --target rpi`` (full INT8, labels embedded, accuracy-gated);
3. writes a sample video of the held-out test digits drawn on paper-like 640x480 frames;
4. classifies the video with the device runtime (``sdk.run``, the twin of ``edge-classify``) and
   publishes over an in-process MQTT broker, printing what a subscriber receives.

A second run reuses the trained model and the bundle (``--fresh`` retrains).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "examples")]
SAMPLE = REPO / "examples" / "mnist_sample.npz"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=REPO / "runs" / "demo-workdir")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--frames", type=int, default=40, help="digits in the sample video")
    ap.add_argument("--fresh", action="store_true", help="retrain and re-export even if a previous demo run exists")
    a = ap.parse_args(argv)
    if a.fresh and a.workdir.exists():
        shutil.rmtree(a.workdir)
    a.workdir.mkdir(parents=True, exist_ok=True)

    from train.config import TrainConfig
    from train.data import load_dataset
    from train.export import export_bundle
    from train.fit import run_training

    run_dir = a.workdir / "runs" / "lenet5-sample"
    if not (run_dir / "metrics.json").is_file():
        print("== 1. training LeNet-5 on the bundled MNIST sample", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_training(TrainConfig(model="lenet5", data=str(SAMPLE), epochs=a.epochs, runs_dir=str(run_dir.parent),
                                 run_name=run_dir.name, tensorboard=False, verbose=2))
    else:
        print(f"== 1. reusing the trained model in {run_dir}")

    bundle = a.workdir / "bundle-rpi"
    if not (bundle / "manifest.json").is_file():
        print("== 2. exporting for the Raspberry Pi (full INT8)", flush=True)
        result = export_bundle("rpi", run=run_dir, out=bundle, calibration_samples=300, latency_runs=50)
        rep = result.report
        print(f"bundle: {result.bundle_dir}  (gate passed: {result.passed})")
        if isinstance(rep, dict):
            print({k: rep[k] for k in list(rep)[:6]})
    else:
        print(f"== 2. reusing the bundle in {bundle}")

    print("== 3. writing a sample video of held-out test digits on paper", flush=True)
    from train.data.videos import write_digit_video

    test = load_dataset(str(SAMPLE), split="test")
    video = write_digit_video(a.workdir / "digits.avi", test.x[: a.frames, :, :, 0], seed=0)
    print(f"video: {video}  (true labels: {' '.join(test.class_names[i] for i in test.y[: a.frames])})")

    print("== 4. classifying on the device runtime, publishing over an in-process MQTT broker", flush=True)
    import demo_device

    return demo_device.main(["--model", str(bundle), "--video", str(video)])


if __name__ == "__main__":
    sys.exit(main())
