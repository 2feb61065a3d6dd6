import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import data
from jaxgen.evaluator import classifier


def test_shipped_weights_reach_the_accuracy_bar(shared_data_dir):
    assert os.path.getsize(classifier.WEIGHTS) < 3_000_000
    splits = data.mnist_splits(shared_data_dir)
    acc = classifier.accuracy(classifier.load(), splits.test_images, splits.test_labels)
    assert acc >= 0.993, acc


def test_features_and_translation():
    features, logits = classifier.predict(classifier.load(), -jnp.ones((4, 28, 28, 1)))
    assert features.shape == (4, classifier.FEATURES) and logits.shape == (4, 10)
    dot = (-jnp.ones((8, 28, 28, 1))).at[:, 10, 10].set(1.0)
    moved = np.argwhere(np.asarray(classifier.translate(jax.random.PRNGKey(0), dot))[..., 0] > 0)
    assert len(moved) == 8 and np.abs(moved[:, 1:] - 10).max() <= classifier.MAX_SHIFT
