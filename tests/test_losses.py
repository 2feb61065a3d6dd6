import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import losses


def _bce(logit, target):
    p = 1 / (1 + np.exp(-logit))
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def test_d_loss_with_one_sided_label_smoothing():
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    loss_real, loss_fake = losses.d_loss(real, fake)
    assert float(loss_real) == pytest.approx((_bce(2.0, 0.9) + _bce(-1.0, 0.9)) / 2, rel=1e-5)
    assert float(loss_fake) == pytest.approx((_bce(0.5, 0.0) + _bce(-3.0, 0.0)) / 2, rel=1e-5)


def test_g_nonsaturating_loss():
    logits = jnp.array([0.0, 1.0])
    expected = (np.log(2) + np.log(1 + np.exp(-1.0))) / 2  # mean of -log sigmoid(logit)
    assert float(losses.g_nonsaturating_loss(logits)) == pytest.approx(expected, rel=1e-5)


def test_moment_term_by_hand():
    # Two images of two pixels. fake: pixel means (1, 2), variances (1, 0);
    # real: means (0, 0), variances (0, 4). Gaps: |1|+|2| = 3 and |1|+|-4| = 5.
    fake = jnp.array([[0.0, 2.0], [2.0, 2.0]])
    real = jnp.array([[0.0, -2.0], [0.0, 2.0]])
    mean_gap, var_gap = losses.moment_gaps(fake, real)
    assert float(mean_gap) == pytest.approx(3.0)
    assert float(var_gap) == pytest.approx(5.0)
    term, _ = losses.moment_loss(fake, real, 0.1)
    assert float(term) == pytest.approx(0.1 * 3 + 0.1 * 5)
    assert float(losses.moment_loss(fake, real, 0.0)[0]) == 0.0


def test_moment_gaps_sum_over_pixels_of_images():
    rng = np.random.default_rng(0)
    fake, real = rng.normal(size=(5, 28, 28, 1)), rng.normal(size=(5, 28, 28, 1))
    mean_gap, var_gap = losses.moment_gaps(jnp.asarray(fake), jnp.asarray(real))
    assert float(mean_gap) == pytest.approx(np.abs(fake.mean(0) - real.mean(0)).sum(), rel=1e-5)
    assert float(var_gap) == pytest.approx(np.abs(fake.var(0) - real.var(0)).sum(), rel=1e-5)
