"""The evaluator's MNIST classifier: a small CNN trained with a fixed recipe and seed.

Its 128-d penultimate features feed the sample-quality metrics (`jaxgen.evaluator.metrics`); its
predictions give digit coverage. The weights ship with the package (`mnist_classifier.msgpack`,
flax's msgpack serialization: no pickle) so that every user computes the same numbers.
Retrain them (about 10 minutes on a 2-core CPU) with:

    python experiments/train_classifier.py --data_dir=../shared/datasets [--out=PATH]

Recipe: the 60,000 MNIST training images, random translations of up to 2 pixels, batch 128,
Adam with a cosine decay from 1e-3 over 8 epochs, dropout 0.3 before the last layer, seed 0.
"""

from __future__ import annotations

import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxgen import data

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_classifier.msgpack")
FEATURES = 128
EPOCHS, BATCH, LEARNING_RATE, SEED, MAX_SHIFT = 8, 128, 1e-3, 0, 2


class MnistClassifier(nn.Module):
    """Conv 32 (5x5) -> BN -> ReLU -> pool -> Conv 64 (5x5) -> BN -> ReLU -> pool
    -> Dense 128 -> BN -> ReLU (the features) -> Dropout -> Dense 10."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Images in [-1, 1], NHWC -> (features (N, 128), logits (N, 10))."""
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        for channels in (32, 64):
            x = nn.relu(norm()(nn.Conv(channels, (5, 5), use_bias=False)(x)))
            x = nn.max_pool(x, (2, 2), (2, 2))
        features = nn.relu(norm()(nn.Dense(FEATURES, use_bias=False)(x.reshape(x.shape[0], -1))))
        logits = nn.Dense(10)(nn.Dropout(0.3, deterministic=not train)(features))
        return features, logits


def translate(key: jax.Array, images: jax.Array, max_shift: int = MAX_SHIFT) -> jax.Array:
    """Shifts each image by up to `max_shift` pixels in each direction, filling with background."""
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                     constant_values=-1.0)
    shifts = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)
    return jax.vmap(lambda img, s: jax.lax.dynamic_slice(img, (s[0], s[1], 0), (h, w, 1)))(
        padded, shifts)


def _train_step(variables, opt_state, images, labels, key, tx):
    aug_key, drop_key = jax.random.split(key)
    images = translate(aug_key, images)

    def loss_fn(params):
        (_, logits), new = MnistClassifier().apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True,
            rngs={"dropout": drop_key}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new

    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {"params": params, "batch_stats": new["batch_stats"]}, opt_state, loss


@jax.jit
def predict(variables, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(features, logits) of images in [-1, 1] (inference mode)."""
    return MnistClassifier().apply(variables, images)


def accuracy(variables, images_uint8: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    correct = 0
    for i in range(0, len(images_uint8), batch):
        _, logits = predict(variables, data.to_float(jnp.asarray(images_uint8[i:i + batch])))
        correct += int((jnp.argmax(logits, -1) == jnp.asarray(labels[i:i + batch])).sum())
    return correct / len(images_uint8)


def train(data_dir: str, epochs: int = EPOCHS, seed: int = SEED, log=print):
    """The fixed recipe; returns the variables and the test accuracy."""
    arrays = data.load_mnist(data_dir)
    images = jnp.asarray(arrays["train_images"][..., None])
    labels = jnp.asarray(arrays["train_labels"].astype(np.int32))
    steps_per_epoch = len(images) // BATCH
    tx = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, epochs * steps_per_epoch))
    key = jax.random.PRNGKey(seed)
    variables = MnistClassifier().init(jax.random.fold_in(key, 0), jnp.zeros((1, 28, 28, 1)))
    opt_state = tx.init(variables["params"])
    step = jax.jit(functools.partial(_train_step, tx=tx), donate_argnums=(0, 1))

    @jax.jit
    def batch_of(perm, i):
        idx = jax.lax.dynamic_slice_in_dim(perm, i * BATCH, BATCH)
        return data.to_float(images[idx]), labels[idx]

    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), epoch),
                                      len(images))
        for i in range(steps_per_epoch):
            step_key = jax.random.fold_in(jax.random.fold_in(key, 2), epoch * steps_per_epoch + i)
            variables, opt_state, loss = step(variables, opt_state, *batch_of(perm, i), step_key)
        acc = accuracy(variables, arrays["test_images"][..., None], arrays["test_labels"])
        log(f"epoch {epoch + 1}/{epochs}: loss {float(loss):.4f} test accuracy {acc:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return variables, acc


def save(variables, path: str = WEIGHTS) -> None:
    with open(path + ".tmp", "wb") as f:
        f.write(serialization.msgpack_serialize(jax.device_get(variables)))
    os.replace(path + ".tmp", path)


@functools.cache
def load(path: str = WEIGHTS):
    """The shipped (or given) classifier variables. (The template is abstract: initializing
    the network op by op only to be overwritten took 3-4 s per process on CPU.)"""
    template = jax.eval_shape(MnistClassifier().init, jax.random.PRNGKey(0),
                              jnp.zeros((1, 28, 28, 1)))
    with open(path, "rb") as f:
        return serialization.from_bytes(template, f.read())
