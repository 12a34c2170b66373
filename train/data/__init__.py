"""Host-side data layer: load labelled image sets, describe them, split them, write Kaggle files.

One entry point, :func:`load_dataset`, reads every kind of source this SDK trains on and returns a
:class:`Dataset` of ``uint8`` images shaped ``(N, H, W, C)`` (RGB order when ``C == 3``):

- a Kaggle "digit-recognizer" CSV (``label,pixel0..pixel783`` or the unlabelled ``pixel0..``),
  or a folder holding ``train.csv`` / ``test.csv``;
- MNIST-style IDX files (``train-images-idx3-ubyte.gz`` ...), MNIST and Fashion-MNIST;
- a ``.npz`` in Keras' ``mnist.npz`` layout (``x_train, y_train, x_test, y_test``) or ``x, y``;
- a folder (or ``.zip``) with one sub-folder per class, optionally under ``train/`` and ``test/``;
- the UCI ``semeion.data`` file (16x16 binary digits, made MNIST-like at 28x28);
- a name: ``mnist``, ``fashion_mnist``, ``cifar10`` (the Keras cache; downloads when online).

Bad input raises :class:`DataError` (an :class:`train.errors.InputError`, so a ``ValueError``)
naming the file and the line, column, key or path at fault; nothing is dropped silently. Loading
needs only numpy and OpenCV (Pillow as a decoding fallback); the splitting helpers need
scikit-learn, and only the named-dataset download needs TensorFlow.

The modules, for a reader:

- ``dataset``: :class:`Dataset`, :class:`DataError` and the helpers every loader shares;
- ``load``: :func:`load_dataset` and its table of formats, one module each: ``kaggle_csv``,
  ``idx``, ``npz``, ``image_tree`` (folders and .zip), ``semeion``, ``keras_named``;
- ``summary``: :func:`summarize`, :func:`format_summary`;
- ``splits``: :func:`stratified_split`, :func:`kfold_indices`, :func:`stratified_sample`;
- ``writers``: :func:`write_kaggle_csv`, :func:`write_kaggle_submission`;
- ``pipeline``: the tf.data pipelines training is fed with; ``videos``: sample digit videos;
- ``__main__``: the command line::

    python -m train.data summary SPEC [--split test]
    python -m train.data kaggle-csv --from path/to/mnist --rows 42000 --out train.csv [--unlabelled]
"""
from __future__ import annotations

from train.data.dataset import CIFAR10_CLASSES, FASHION_MNIST_CLASSES, MNIST_CLASSES, DataError, Dataset
from train.data.idx import read_idx
from train.data.keras_named import keras_cache_dir
from train.data.load import ACCEPTED_KINDS, load_dataset
from train.data.splits import kfold_indices, stratified_sample, stratified_split
from train.data.summary import format_summary, summarize
from train.data.writers import write_kaggle_csv, write_kaggle_submission

__all__ = [
    "DataError",
    "Dataset",
    "load_dataset",
    "read_idx",
    "summarize",
    "format_summary",
    "stratified_split",
    "kfold_indices",
    "stratified_sample",
    "write_kaggle_submission",
    "write_kaggle_csv",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "ACCEPTED_KINDS",
    "keras_cache_dir",
]
