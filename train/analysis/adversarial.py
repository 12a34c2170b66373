"""Adversarial examples (FGSM, PGD) and adversarial training, in raw pixel units (0..255).

Attacks use the model's logits when it ends in a softmax ``Activation`` (every ``train`` model
does, see ``train.models._common.softmax_head``): the gradient of a saturated softmax is zero,
which would make confident images look robust.

- FGSM (Goodfellow et al. 2015): ``x + eps * sign(grad)``.
- PGD (Madry et al. 2018), L-inf: random start in the eps-ball, ``steps`` signed-gradient steps of
  ``step_size`` (default ``2.5 * eps / steps``), each projected back onto the ball.

Adversarial images are clipped to 0..255. :class:`AdversarialTrainer` fits a model with a share
of every training batch replaced by adversarial examples against the current weights; what is
saved is the wrapped plain functional model.
"""
from __future__ import annotations

from train._tf import keras, tf

METHODS = ("fgsm", "pgd")


def attack_target(model) -> tuple[keras.Model, bool]:
    """``(network, from_logits)``: ``model`` up to its logits when it ends in a softmax
    ``Activation``, else ``model`` itself (its probabilities)."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation) and last.get_config()["activation"] == "softmax":
        return keras.Model(model.inputs, last.input, name=f"{model.name}_logits"), True
    return model, False


def _loss(net, from_logits: bool, x, y):
    out = tf.cast(net(x, training=False), tf.float32)
    if y.shape.rank == 2:  # one-hot targets (label smoothing)
        return keras.losses.categorical_crossentropy(y, out, from_logits=from_logits)
    return keras.losses.sparse_categorical_crossentropy(y, out, from_logits=from_logits)


def _gradient_sign(net, from_logits: bool, x, y):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss(net, from_logits, x, y)
    return tf.sign(tape.gradient(loss, x))


def fgsm(net, x, y, epsilon, *, from_logits: bool = True):
    """FGSM images for float pixels ``x`` (0..255) and labels ``y``; ``epsilon`` in pixels."""
    x = tf.convert_to_tensor(x, tf.float32)
    return tf.clip_by_value(x + epsilon * _gradient_sign(net, from_logits, x, y), 0.0, 255.0)


def pgd(net, x, y, epsilon, *, steps: int = 10, step_size=None, from_logits: bool = True, rng=None):
    """L-inf PGD images with a random start; ``rng`` is a ``tf.random.Generator`` (for
    reproducible starts) or None for the global seed."""
    x = tf.convert_to_tensor(x, tf.float32)
    epsilon = tf.cast(epsilon, tf.float32)
    step_size = 2.5 * epsilon / steps if step_size is None else tf.cast(step_size, tf.float32)
    uniform = rng.uniform if rng is not None else tf.random.uniform
    adv = tf.clip_by_value(x + uniform(tf.shape(x), -1.0, 1.0) * epsilon, 0.0, 255.0)
    for _ in range(steps):
        adv = adv + step_size * _gradient_sign(net, from_logits, adv, y)
        adv = tf.clip_by_value(tf.clip_by_value(adv, x - epsilon, x + epsilon), 0.0, 255.0)
    return adv


class AdversarialTrainer(keras.Model):
    """Trains ``model`` on batches whose first ``ratio`` share is replaced by FGSM or PGD
    examples of L-inf size ``epsilon`` (pixels). Batches arrive shuffled, so the share is a random
    one. Fit the trainer; save ``trainer.net`` (the plain functional model, which exports as is)."""

    def __init__(self, model, *, method: str, epsilon: float, ratio: float = 0.5, pgd_steps: int = 7):
        if method not in METHODS:
            raise ValueError(f"unknown adversarial method {method!r}; valid: {', '.join(METHODS)}")
        super().__init__(name=f"{model.name}_adversarial")
        self.net = model
        self._target, self._from_logits = attack_target(model)
        self.method, self.epsilon, self.ratio, self.pgd_steps = method, float(epsilon), float(ratio), int(pgd_steps)

    def call(self, inputs, training=None):
        return self.net(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        n = tf.cast(tf.round(self.ratio * tf.cast(tf.shape(x)[0], tf.float32)), tf.int32)
        if self.method == "fgsm":
            adv = fgsm(self._target, x[:n], y[:n], self.epsilon, from_logits=self._from_logits)
        else:
            adv = pgd(self._target, x[:n], y[:n], self.epsilon, steps=self.pgd_steps, from_logits=self._from_logits)
        x = tf.concat([tf.stop_gradient(adv), x[n:]], axis=0)
        return super().train_step(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))
