"""From a TrainConfig to the splits and the tf.data pipelines that feed training.

``build_splits`` is deterministic in the config (spec, fractions, seed), so evaluation and export
can rebuild exactly the validation and test sets a run was judged on.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from train.config import AugmentConfig, TrainConfig
from train.data.dataset import DataError, Dataset
from train.data.load import load_dataset
from train.data.splits import stratified_sample, stratified_split

logger = logging.getLogger(__name__)

def _has_test_split(spec: str) -> bool:
    """Whether ``spec`` can hold a test split of its own. A single file of rows (CSV, semeion.data,
    one IDX file) cannot: its loader ignores ``split``, so asking for "test" would return the
    training rows again."""
    p = Path(spec)
    return not p.is_file() or p.suffix.lower() in (".npz", ".zip")


def detect_polarity(x: np.ndarray) -> str:
    """'light_on_dark' when the image borders are dark (MNIST), 'dark_on_light' when light, else 'any'."""
    border = np.concatenate(
        [x[:, 0, :, :].ravel(), x[:, -1, :, :].ravel(), x[:, :, 0, :].ravel(), x[:, :, -1, :].ravel()]
    )
    m = float(border.mean())
    if m < 40:
        return "light_on_dark"
    if m > 215:
        return "dark_on_light"
    return "any"


def build_splits(config: TrainConfig) -> dict[str, Dataset | None]:
    """Load ``config.data`` (and the test set) and split it as the config says.

    Returns ``{"train", "val", "test"}``; ``test`` is None when there is no held-out set.
    """
    size = tuple(config.image_size) if config.image_size else None
    full = load_dataset(config.data, split="train", image_size=size, colour=config.colour)
    if full.y is None:
        raise DataError(f"{config.data}: training data has no labels")
    parts = stratified_split(full, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    test: Dataset | None = parts.get("test")
    if test is None:
        test_spec = config.test_data
        if test_spec is None and _has_test_split(config.data):
            test_spec = config.data
        if test_spec is not None:
            try:
                test = load_dataset(test_spec, split="test", image_size=full.image_shape[:2],
                                    colour="rgb" if full.x.shape[-1] == 3 else "grey")
            except DataError:
                if config.test_data is not None:
                    raise
                logger.info("%s has no test split; reporting validation metrics only", config.data)
                test = None
            if test is not None and test.y is None:
                logger.info("%s: the test split has no labels; reporting validation metrics only", test_spec)
                test = None
            if test is not None:
                if test.class_names != full.class_names:
                    raise DataError(
                        f"{test_spec}: test classes {test.class_names} differ from training classes {full.class_names}"
                    )
    train = parts["train"]
    if config.train_limit is not None and config.train_limit < len(train):
        train = stratified_sample(train, config.train_limit, seed=config.seed)
    return {"train": train, "val": parts["val"], "test": test}


@functools.cache
def _elastic_layer_class():
    from train._tf import keras, tf

    class RandomElastic(keras.layers.Layer):
        """Elastic distortion (Simard, Steinkraus and Platt 2003) of a batch of HxWxC images.

        A uniform random displacement field in [-1, 1] per pixel and axis is smoothed with a Gaussian
        of ``sigma`` pixels, scaled by ``alpha`` pixels, and the image is resampled bilinearly along it
        with OpenCV (``cv2.GaussianBlur``, ``cv2.remap``); pixels pulled from outside get ``fill_value``.
        """

        def __init__(self, alpha: float, sigma: float, fill_value: float = 0.0, seed: int | None = None, **kw):
            super().__init__(**kw)
            self.alpha, self.sigma, self.fill_value, self.seed = float(alpha), float(sigma), float(fill_value), seed
            self._rng = np.random.default_rng(seed)

        def _distort(self, batch: np.ndarray) -> np.ndarray:
            import cv2

            n, h, w = batch.shape[:3]
            grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            out = np.empty_like(batch)
            for i in range(n):
                field = self._rng.uniform(-1.0, 1.0, size=(h, w, 2)).astype(np.float32)
                field = cv2.GaussianBlur(field, (0, 0), self.sigma) * self.alpha
                warped = cv2.remap(batch[i], grid_x + field[..., 0], grid_y + field[..., 1], cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=(self.fill_value,) * 4)
                out[i] = warped.reshape(batch.shape[1:])
            return out

        def call(self, inputs, training=None):
            if not training:
                return inputs
            out = tf.numpy_function(self._distort, [tf.cast(inputs, tf.float32)], tf.float32, stateful=True)
            out.set_shape(inputs.shape)
            return out

        def get_config(self):
            return {**super().get_config(), "alpha": self.alpha, "sigma": self.sigma,
                    "fill_value": self.fill_value, "seed": self.seed}

    return RandomElastic


def RandomElastic(alpha: float, sigma: float, fill_value: float = 0.0, seed: int | None = None, **kw):
    """An elastic-distortion Keras layer (built on first use so importing this module needs no TensorFlow)."""
    return _elastic_layer_class()(alpha, sigma, fill_value=fill_value, seed=seed, **kw)


@functools.cache
def _cutout_layer_class():
    from train._tf import keras, tf

    class RandomCutout(keras.layers.Layer):
        """Cutout (DeVries and Taylor 2017): one square of ``size`` x ``size`` pixels set to ``fill_value``
        per image, centred uniformly over the image and clipped at its edges, so some squares are partial."""

        def __init__(self, size: int, fill_value: float = 0.0, seed: int | None = None, **kw):
            super().__init__(**kw)
            self.size, self.fill_value, self.seed = int(size), float(fill_value), seed
            self._gen = tf.random.Generator.from_seed(seed if seed is not None else 0)

        def call(self, inputs, training=None):
            if not training:
                return inputs
            shape = tf.shape(inputs)
            n, h, w = shape[0], shape[1], shape[2]
            cy = self._gen.uniform([n, 1, 1], 0, h, dtype=tf.int32)
            cx = self._gen.uniform([n, 1, 1], 0, w, dtype=tf.int32)
            ys = tf.reshape(tf.range(h), [1, -1, 1])
            xs = tf.reshape(tf.range(w), [1, 1, -1])
            lo = self.size // 2
            inside = ((ys >= cy - lo) & (ys < cy - lo + self.size)) & ((xs >= cx - lo) & (xs < cx - lo + self.size))
            return tf.where(inside[..., None], tf.cast(self.fill_value, inputs.dtype), inputs)

        def get_config(self):
            return {**super().get_config(), "size": self.size, "fill_value": self.fill_value, "seed": self.seed}

    return RandomCutout


def RandomCutout(size: int, fill_value: float = 0.0, seed: int | None = None, **kw):
    """A cutout Keras layer (built on first use so importing this module needs no TensorFlow)."""
    return _cutout_layer_class()(size, fill_value=fill_value, seed=seed, **kw)


def make_augmenter(aug: AugmentConfig, image_shape: tuple[int, int, int], fill_value: float, seed: int):
    """A Keras preprocessing stack applied to float batches of raw pixels (0..255), or None.

    With ``aug.enabled`` false, a non-zero ``aug.noise_std``, ``aug.elastic`` or ``aug.cutout`` still applies, alone."""
    from train._tf import keras

    if not aug.enabled:
        if not (aug.noise_std or aug.elastic or aug.cutout):
            return None
        # noise_std (the noise-injection defence), elastic and cutout stand alone: none of the geometric defaults
        aug = AugmentConfig(enabled=True, rotation=0, shift=0, zoom=0, noise_std=aug.noise_std,
                            elastic=aug.elastic, elastic_sigma=aug.elastic_sigma, cutout=aug.cutout)
    h, w, _ = image_shape
    L = keras.layers
    layers = []
    if aug.hflip or aug.vflip:
        mode = "horizontal_and_vertical" if aug.hflip and aug.vflip else ("horizontal" if aug.hflip else "vertical")
        layers.append(L.RandomFlip(mode, seed=seed))
    if aug.rotation:
        layers.append(L.RandomRotation(aug.rotation / 360.0, fill_mode="constant", fill_value=fill_value, seed=seed))
    if aug.zoom:
        layers.append(L.RandomZoom(aug.zoom, fill_mode="constant", fill_value=fill_value, seed=seed))
    if aug.shift:
        layers.append(L.RandomTranslation(aug.shift, aug.shift, fill_mode="constant", fill_value=fill_value, seed=seed))
    if aug.elastic:
        layers.append(RandomElastic(aug.elastic, aug.elastic_sigma, fill_value=fill_value, seed=seed))
    if aug.crop:
        ch, cw = max(1, round(h * (1 - aug.crop))), max(1, round(w * (1 - aug.crop)))
        layers += [L.RandomCrop(ch, cw, seed=seed), L.Resizing(h, w)]
    if aug.cutout:
        layers.append(RandomCutout(max(1, round(aug.cutout * min(h, w))), fill_value=fill_value, seed=seed))
    if aug.brightness:
        layers.append(L.RandomBrightness(aug.brightness, value_range=(0.0, 255.0), seed=seed))
    if aug.contrast:
        layers.append(L.RandomContrast(aug.contrast, seed=seed))
    if aug.noise_std:
        # force_generator: a tf.random.Generator whose state carries over between epochs; without it
        # the seeded op restarts with every new tf.data iterator and repeats its noise every epoch
        layers.append(L.GaussianNoise(aug.noise_std, seed=seed, force_generator=True))
    if not layers:
        return None
    return keras.Sequential(layers, name="augment")


def make_tf_dataset(ds: Dataset, batch_size: int, *, training: bool, augmenter=None, seed: int = 42):
    """A batched, prefetched tf.data pipeline of (float32 raw pixels, int label)."""
    from train._tf import tf

    data = tf.data.Dataset.from_tensor_slices((ds.x, ds.y))
    if training:
        data = data.shuffle(min(len(ds), 20000), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    data = data.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:

        def _aug(x, y):
            return tf.clip_by_value(augmenter(x, training=True), 0.0, 255.0), y

        data = data.map(_aug, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)
