"""Datasets by name: ``mnist``, ``fashion_mnist``, ``cifar10``, from the Keras cache.

A file already in the cache (``$KERAS_HOME/datasets``, default ``~/.keras/datasets``) is read
without TensorFlow; otherwise Keras downloads it, and an offline refusal says which local files
would do instead.
"""
from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

from train.data.dataset import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    DataError,
    Dataset,
    Request,
    images_array,
    labels_array,
)
from train.data.idx import load_idx_folder
from train.data.npz import read_npz

logger = logging.getLogger(__name__)

__all__ = ["ACCEPTS", "close_name", "detect", "keras_cache_dir", "load", "load_named", "named_key"]

ACCEPTS = "a dataset name: mnist, fashion_mnist, cifar10 (Keras cache, downloaded when online)"

_ALIASES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10",
}
_CLASSES = {"mnist": MNIST_CLASSES, "fashion_mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}


def named_key(text: str) -> str | None:
    """The dataset ``text`` names (any spelling in the alias table), or None."""
    return _ALIASES.get(text.strip().lower())


def close_name(text: str) -> str | None:
    """The dataset name ``text`` is closest to (a typo's suggestion), or None."""
    match = difflib.get_close_matches(text.lower(), list(_ALIASES), n=1)
    return _ALIASES[match[0]] if match else None


def detect(request: Request) -> bool:
    """A name, where no file or folder of that name exists (a path always wins)."""
    return not request.path.exists() and named_key(request.spec) is not None


def load(request: Request) -> Dataset:
    return load_named(named_key(request.spec), request.split, request.class_names)  # type: ignore[arg-type]


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded datasets: $KERAS_HOME, else ~/.keras (files under datasets/)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def load_named(key: str, split: str, names: list[str] | None) -> Dataset:
    """The ``train`` or ``test`` split of the named set ``key`` (a canonical name)."""
    if split not in ("train", "test"):
        raise DataError(f"{key}: has splits 'train' and 'test'; got '{split}'")
    class_names = names or list(_CLASSES[key])
    cache = keras_cache_dir()
    datasets = cache / "datasets"
    if key == "mnist" and (datasets / "mnist.npz").is_file():
        logger.info("mnist: using the Keras cache %s", datasets / "mnist.npz")
        return read_npz(datasets / "mnist.npz", split, class_names, source="mnist")
    if key == "fashion_mnist" and (datasets / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        logger.info("fashion_mnist: using the Keras cache %s", datasets / "fashion-mnist")
        ds = load_idx_folder(datasets / "fashion-mnist", split, class_names)
        ds.source = "fashion_mnist"
        return ds
    expected = {"mnist": datasets / "mnist.npz", "fashion_mnist": datasets / "fashion-mnist",
                "cifar10": datasets / "cifar-10-batches-py"}[key]
    hint = _offline_hint(key, expected)
    try:
        from train._tf import keras
    except ImportError as e:
        raise DataError(f"{key}: not in the Keras cache ({expected}) and TensorFlow is not installed "
                        f"to download it. {hint}") from e
    cache.mkdir(parents=True, exist_ok=True)
    try:
        (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets, key).load_data(cache_dir=str(cache))
    except Exception as e:  # noqa: BLE001 - get_file raises bare Exception on network failure
        raise DataError(f"{key}: not in the Keras cache ({expected}) and the download failed "
                        f"({type(e).__name__}: {e}). {hint}") from e
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    x = images_array(x, f"{key}[{split}]")
    return Dataset(x=x, y=labels_array(y, len(x), key, len(class_names)), class_names=class_names,
                   source=key)


def _offline_hint(key: str, expected: Path) -> str:
    if key == "cifar10":
        return ("Without internet, point at local files instead, e.g. `--data cifar10-jpeg.zip` or a "
                f"folder of <split>/<class>/*.jpg, or put the Keras files at {expected}.")
    return (f"Without internet, point at local files instead, e.g. `--data path/to/{key}/` (a folder "
            "with the IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), or a .npz with x_train, y_train, "
            "x_test, y_test (examples/mnist_sample.npz is a small MNIST one), or put the Keras file at "
            f"{expected}.")
