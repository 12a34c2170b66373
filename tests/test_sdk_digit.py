"""Golden test: the digit preprocessing lets an MNIST model read digits held in front of a camera.

A real video (cv2.VideoWriter, MJPG) of 300 real MNIST *test* digits drawn dark-on-light on
paper-like frames at random positions and sizes under uneven light, decoded with OpenCV and
classified by the real INT8 bundle through the same Classifier the pipeline uses.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sdk.pipeline import Classifier
from sdk.preprocess import centre_digit, find_digit
from sdk.runtime import load_bundle
from sdk_bundle_fixture import load_mnist, sdk_bundle  # noqa: F401  (fixture)
from train.data.videos import paper_frame, write_digit_video

N = 300


@pytest.mark.slow
def test_paper_digit_video_accuracy(sdk_bundle, mnist_dir, tmp_path):
    x, y = load_mnist(mnist_dir, "test")
    idx = np.random.default_rng(2024).choice(len(x), N, replace=False)
    video = write_digit_video(tmp_path / "paper.avi", x[idx], seed=7)
    clf = Classifier(load_bundle(sdk_bundle), top_k=1)
    assert clf.preprocessor.mode == "digit"  # from the manifest, not from a flag
    cap = cv2.VideoCapture(str(video))
    preds = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        preds.append(clf.classify(frame).top[0].id)
    cap.release()
    assert len(preds) == N
    acc = float(np.mean(np.array(preds) == y[idx]))
    print(f"paper-digit video accuracy: {acc:.3f} over {N} frames")
    assert acc >= 0.95


def test_plain_resize_is_far_worse_on_paper(sdk_bundle, mnist_dir):
    """Sanity: without the digit mode a camera frame is not an MNIST digit (why the mode exists)."""
    x, y = load_mnist(mnist_dir, "test")
    rng = np.random.default_rng(1)
    frames = [paper_frame(x[i], rng) for i in range(60)]
    plain = Classifier(load_bundle(sdk_bundle), mode="plain")
    digit = Classifier(load_bundle(sdk_bundle), mode="digit")
    acc_plain = np.mean([plain.classify(f).top[0].id == y[i] for i, f in enumerate(frames)])
    acc_digit = np.mean([digit.classify(f).top[0].id == y[i] for i, f in enumerate(frames)])
    assert acc_digit >= 0.9 and acc_digit > acc_plain + 0.3


def test_find_digit_under_a_strong_light_gradient():
    img = np.zeros((28, 28), np.uint8)
    cv2.line(img, (14, 4), (14, 23), 255, 3)  # a "1"
    big = cv2.resize(img, (200, 200), interpolation=cv2.INTER_CUBIC)
    ramp = np.tile(np.linspace(60, 240, 640, dtype=np.float32), (480, 1))
    paper = ramp.copy()
    paper[200:400, 50:250] *= 1 - big.astype(np.float32) / 255 * 0.8  # on the dark side of the page
    found = find_digit(np.clip(paper, 0, 255).astype(np.uint8))
    assert found is not None
    crop, (bx, by, bw, bh) = found
    assert 50 <= bx <= 250 and 200 <= by <= 400 and bh > 2 * bw
    out = centre_digit(crop, (28, 28))
    m = cv2.moments(out)
    assert abs(m["m10"] / m["m00"] - 14) < 1 and abs(m["m01"] / m["m00"] - 14) < 1
    rows = np.where(out.max(axis=1) > 0)[0]
    assert rows[-1] - rows[0] + 1 <= 21  # fits the 20-pixel box


def test_blank_paper_has_no_digit():
    rng = np.random.default_rng(0)
    paper = np.clip(rng.normal(190, 3, (480, 640)), 0, 255).astype(np.uint8)
    assert find_digit(paper) is None
