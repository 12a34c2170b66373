"""Write examples/mnist_sample.npz: a small stratified MNIST sample that ships with the repo.

3,000 training and 1,000 test images drawn class-stratified (seed 0) from the real MNIST IDX files,
saved in Keras' mnist.npz layout (x_train, y_train, x_test, y_test; uint8; images (N, 28, 28)) so the
README demo runs offline:

    python -m train.train --model lenet5 --data examples/mnist_sample.npz

Regenerate with:

    python examples/make_sample.py --mnist ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.data import load_dataset, stratified_sample  # noqa: E402

DEFAULT_MNIST = Path(os.environ.get("EDGECLF_SHARED_DATA", REPO.parent / "shared" / "data")) / "mnist"


def make_sample(mnist: Path, out: Path, n_train: int = 3000, n_test: int = 1000, seed: int = 0) -> Path:
    parts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ds = stratified_sample(load_dataset(mnist, split=split), n, seed=seed)
        parts[f"x_{split}"] = ds.x[..., 0]
        parts[f"y_{split}"] = ds.y.astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **parts)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST,
                        help="folder with the MNIST IDX files (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "mnist_sample.npz")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_sample(args.mnist, args.out, args.train, args.test, args.seed)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
