import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import losses

# Jitted: eagerly, each of its ~100 ops compiles a program of its own (2.8 s against 0.8).
_pixel_mmd = jax.jit(losses.pixel_mmd)


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


def test_moment_relatives_by_hand():
    """The same two-pixel batches: per-part weights, squared gaps, and fixed target moments."""
    fake = jnp.array([[0.0, 2.0], [2.0, 2.0]])  # means (1, 2), variances (1, 0)
    real = jnp.array([[0.0, -2.0], [0.0, 2.0]])  # means (0, 0), variances (0, 4)
    term, gaps = losses.moment_loss(fake, real, 0.1, var_weight=0.0)  # the mean part alone
    assert float(term) == pytest.approx(0.1 * 3) and float(gaps[1]) == pytest.approx(5.0)
    assert float(losses.moment_loss(fake, real, 0.0, var_weight=0.1)[0]) == pytest.approx(0.5)
    term, (mean_gap, var_gap) = losses.moment_loss(fake, real, 0.1, form="l2")
    assert (float(mean_gap), float(var_gap)) == pytest.approx((1 + 4, 1 + 16))
    assert float(term) == pytest.approx(0.1 * 5 + 0.1 * 17)
    # Against fixed moments (the real batch is then ignored): means (1, 1), variances (1, 1).
    target = (jnp.array([1.0, 1.0]), jnp.array([1.0, 1.0]))
    _, gaps = losses.moment_loss(fake, real * 100, 0.1, target=target)
    assert [float(g) for g in gaps] == pytest.approx([0 + 1, 0 + 1])
    with pytest.raises(ValueError, match="l1"):
        losses.moment_loss(fake, real, 0.1, form="l3")


def test_feature_matching_by_hand():
    fake = jnp.array([[1.0, 0.0], [3.0, 2.0]])  # feature means (2, 1)
    real = jnp.array([[0.0, 0.0], [0.0, 4.0]])  # feature means (0, 2)
    assert float(losses.feature_matching(fake, real)) == pytest.approx(2.0 ** 2 + 1.0 ** 2)
    assert float(losses.feature_matching(fake, fake[::-1])) == 0.0  # only the means count


def test_pixel_mmd_by_hand_with_the_median_bandwidth():
    """Two one-pixel images per batch: fake (0, 1), real (0, 3). Squared distances between the
    pooled four images: 1, 0, 9, 1, 4, 9 (median 2.5), so k = exp(-d2 / 2.5)."""
    fake, real = jnp.array([[0.0], [1.0]]), jnp.array([[0.0], [3.0]])
    k = lambda d2: np.exp(-d2 / 2.5)
    kxx, kyy = k(1.0), k(9.0)  # the off-diagonal pair within each batch
    kxy = (k(0.0) + k(9.0) + k(1.0) + k(4.0)) / 4
    assert float(_pixel_mmd(fake, real)) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-5)
    rng = np.random.default_rng(0)
    x, y = (jnp.asarray(rng.normal(size=(50, 4))) for _ in range(2))
    near, far = (float(_pixel_mmd(x, y + shift)) for shift in (0.0, 2.0))
    assert abs(near) < 0.05 < far  # two draws of one distribution: near 0 (unbiased)
