"""Shared fixtures. Real data comes from ../shared/data (see its SOURCES.txt); nothing downloads."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGECLF_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (set EDGECLF_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def mnist_dir(shared_data) -> Path:
    return _need(shared_data / "mnist")


@pytest.fixture(scope="session")
def fashion_dir(shared_data) -> Path:
    return _need(shared_data / "fashion-mnist")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, mnist_dir) -> Path:
    """A LeNet-5 run on 3,000 real MNIST training images, 3 epochs, via the real trainer."""
    from train.config import TrainConfig
    from train.fit import run_training

    config = TrainConfig(
        model="lenet5",
        data=str(mnist_dir),
        train_limit=3000,
        epochs=3,
        batch_size=64,
        lr_schedule="none",
        early_stopping_patience=0,
        runs_dir=str(tmp_path_factory.mktemp("runs")),
        run_name="lenet5-small",
        tensorboard=False,
        verbose=0,
    )
    return run_training(config, evaluate=False)


@pytest.fixture(scope="session")
def distinct_digits(mnist_test):
    """120 real MNIST test digits (images, labels) whose perceptual hashes are pairwise more than
    8 bits apart, so no store or sampler takes one for a near-duplicate of another."""
    from sdk.uncertainty import hamming, phash

    picked, hashes = [], []
    for i in range(len(mnist_test)):
        h = phash(mnist_test.x[i, ..., 0])
        if all(hamming(h, o) > 8 for o in hashes):
            picked.append(i)
            hashes.append(h)
            if len(picked) == 120:
                break
    return mnist_test.x[picked, ..., 0], mnist_test.y[picked]


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    from train.data import load_dataset

    return load_dataset(str(mnist_dir), split="test")
