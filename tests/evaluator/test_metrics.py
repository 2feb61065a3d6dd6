import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import data
from jaxgen.evaluator import metrics


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    mu, sigma = metrics.gaussian_stats(a)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # Diagonal Gaussians: |m1 - m2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    m1, m2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2
    assert metrics.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected)


def test_frechet_distance_of_a_shifted_gaussian_sample():
    rng = np.random.default_rng(1)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    x, y = rng.normal(size=(100000, 4)), rng.normal(size=(100000, 4)) + shift
    fd = metrics.frechet_distance(*metrics.gaussian_stats(x), *metrics.gaussian_stats(y))
    assert fd == pytest.approx(shift @ shift, abs=0.08)  # 4 sigma of the sampling error


def test_kernel_distance_is_unbiased_and_grows_with_the_shift():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2000, 8)), jnp.float32)
    same = jnp.asarray(rng.normal(size=(2000, 8)), jnp.float32)
    key = jax.random.PRNGKey(0)
    kid_same = float(metrics.kernel_distance(x, same, key, subsets=20, size=500))
    kid_near = float(metrics.kernel_distance(x, same + 0.3, key, subsets=20, size=500))
    kid_far = float(metrics.kernel_distance(x, same + 1.0, key, subsets=20, size=500))
    assert abs(kid_same) < 0.02 < kid_near < kid_far


@pytest.mark.parametrize("form", ["blocks", "matrix"])
def test_subset_sums_equal_the_sums_of_each_subsets_kernel(form):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(1500, 4)), rng.normal(size=(700, 4))  # a spans two row chunks
    ia, ib = rng.integers(0, 1500, (3, 50)), rng.integers(0, 700, (3, 50))
    expected = [((a[i] @ b[j].T / 4 + 1) ** 3).sum() for i, j in zip(ia, ib)]
    got = metrics.subset_sums(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                              jnp.asarray(ia), jnp.asarray(ib), form=form)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_reference_kid_keeps_the_references_term_and_changes_nothing():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(300, 8)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(400, 8)) + 0.2, jnp.float32)
    reference = metrics.Reference(y, None, None, None, None, None)
    direct = float(metrics.kernel_distance(x, y, jax.random.PRNGKey(3)))
    assert metrics.reference_kid(x, reference, seed=3) == pytest.approx(direct, rel=1e-5)
    assert list(reference.kid_terms) == [(3, 300)]
    assert metrics.reference_kid(x + 1.0, reference, seed=3) > direct  # the kept term reused
    assert list(reference.kid_terms) == [(3, 300)]


def test_knn_radii_and_precision_recall_on_toy_clouds():
    # Inputs made in NumPy: eager jnp ops would each compile a program of their own.
    line = jnp.asarray(np.repeat(np.arange(10.0, dtype=np.float32)[:, None], 2, 1))  # (i, i)
    np.testing.assert_allclose(metrics.knn_radii(line, k=1), 2.0)
    np.testing.assert_allclose(metrics.knn_radii(line, k=3)[0], 2 * 9.0)  # 3rd neighbour of 0

    rng = np.random.default_rng(3)
    real, twin = (rng.uniform(size=(2000, 2)).astype(np.float32) for _ in range(2))
    p, r = metrics.precision_recall(jnp.asarray(real), jnp.asarray(twin))
    assert p > 0.9 and r > 0.9
    corner = real[(real < 0.3).all(1)]  # a collapsed generator: real-looking, one corner only
    p, r = metrics.precision_recall(jnp.asarray(real), jnp.asarray(corner))
    assert p == 1.0 and 0.05 < r < 0.2  # the corner holds 9% of the square
    p, r = metrics.precision_recall(jnp.asarray(real), jnp.asarray(twin + np.float32(5.0)))
    assert p == 0.0 and r == 0.0


def test_class_coverage_and_kl():
    # Logits made in NumPy: eager jnp ops would each compile a program of their own.
    one_class = np.zeros((100, 10), np.float32)
    one_class[:, 3] = 5.0
    coverage, kl = metrics.class_coverage(jnp.asarray(one_class))
    assert coverage == 1 and kl == pytest.approx(np.log(10))
    uniform = jnp.asarray(np.eye(10, dtype=np.float32)[np.arange(1000) % 10])
    assert metrics.class_coverage(uniform) == (10, pytest.approx(0.0, abs=1e-12))
    rare = jnp.asarray(np.eye(10, dtype=np.float32)[[0] * 995 + [1] * 5])  # 0.5% < 1%: not covered
    assert metrics.class_coverage(rare)[0] == 1


@pytest.fixture(scope="module")
def test_images(shared_data_dir):
    return data.to_float(jnp.asarray(data.mnist_splits(shared_data_dir).test_images[:2000]))


def test_identical_sets_and_a_repeated_digit(test_images):
    reference = metrics.make_reference(test_images)
    same = metrics.evaluate(test_images, reference)
    assert same["eval/fd"] == pytest.approx(0.0, abs=1e-6)
    assert same["eval/precision"] == 1.0 and same["eval/recall"] == 1.0
    assert same["eval/coverage"] == 10 and same["eval/class_kl"] < 0.05
    assert same["eval/mean_gap"] == pytest.approx(0.0, abs=1e-9)
    # Independent subsets of one set share points, so the estimate is not exactly 0.
    assert abs(same["eval/kid"]) < 0.02

    repeated = metrics.evaluate(jnp.repeat(test_images[:1], 500, axis=0), reference)
    assert repeated["eval/coverage"] == 1
    assert repeated["eval/class_kl"] == pytest.approx(np.log(10))
    assert repeated["eval/recall"] < 0.05
    assert repeated["eval/fd"] > 100 * max(same["eval/fd"], 1e-3)
    assert repeated["eval/kid"] > 1.0


def test_conditional_metrics_per_requested_digit():
    rng = np.random.default_rng(0)
    ref_labels = np.repeat(np.arange(3), 50)
    ref_features = rng.normal(size=(150, 4)) + ref_labels[:, None] * 5.0
    reference = metrics.Reference(jnp.asarray(ref_features), *metrics.gaussian_stats(ref_features),
                                  None, np.zeros(1), np.zeros(1), labels=ref_labels)
    asked = np.repeat(np.arange(3), 40)
    predicted = asked.copy()
    predicted[:10] = 1  # a quarter of the 0s come out as 1s
    logits = np.eye(10)[predicted]
    # Samples asked for d drawn like the reference's d: small per-digit distances.
    features = rng.normal(size=(120, 4)) + asked[:, None] * 5.0
    out = metrics.conditional_metrics(features, logits, asked, reference)
    assert out["cond_acc"] == pytest.approx(110 / 120)
    assert out["cond_acc_0"] == pytest.approx(0.75) and out["cond_acc_2"] == 1.0
    assert all(out[f"fd_{d}"] < 1.0 for d in range(3))
    # Asked for 0 but drawn like the reference's 2s: digit 0's distance is large.
    shifted = features.copy()
    shifted[asked == 0] += 10.0
    far = metrics.conditional_metrics(shifted, logits, asked, reference)
    assert far["fd_0"] > 100 and far["fd_class_mean"] > out["fd_class_mean"]
    with pytest.raises(ValueError, match="labels"):
        metrics.conditional_metrics(features, logits, asked,
                                    dataclasses.replace(reference, labels=None))
