"""G's loss terms beside the adversarial one (the moment term's relatives of the `moment_why`
study) and their diagnostics, in the GAN train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxgen import data, grid, sharding
from jaxgen.errors import UserError
from jaxgen.trainers import gan

# Every relative at once (one compile): per-part weights, squared gaps against the training
# set's moments, feature matching, the pixel MMD and D's minibatch-stddev channel. G steps by
# SGD, whose step is linear in the gradient (Adam's first step is its sign, which float noise
# flips where a gradient is near 0).
ALL_TERMS = {"loss.moment_mean_weight": "0.05", "loss.moment_form": "l2",
             "loss.moment_target": "dataset", "loss.feature_matching": "1.0",
             "loss.mmd": "2.0", "model.d_minibatch_std": "2", "g_optimizer.name": "sgd"}


def _one_step(data_dir, **overrides):
    run_config = grid.expand_grid(tiny_config(data_dir, **overrides))[0]
    fns = gan.build(run_config)
    state = fns.create(jax.random.PRNGKey(0), learning_rate=1e-3, moment_weight=0.1)
    splits = data.mnist_splits(data_dir, 100)
    mean, var = gan.pixel_moments(splits.train_images)
    dataset = jax.device_put({"images": splits.train_images, "labels": splits.train_labels,
                              "pixel_mean": mean, "pixel_var": var},
                             sharding.replicated(sharding.make_mesh()))
    perm = jnp.arange(len(splits.train_images))
    batch = jax.device_get(fns.get_batch(dataset, perm, 0, 0))
    before = jax.device_get(state)
    after, metrics = fns.steps(state, dataset, perm, 0, 0, num_steps=1)
    return (run_config, before, jax.device_get(after),
            jax.device_get(jax.tree.map(lambda x: x[0], metrics)), batch, (mean, var))


@pytest.fixture(scope="module")
def with_and_without_diagnostics(synthetic_data_dir):
    return (_one_step(synthetic_data_dir, **ALL_TERMS, **{"loss.term_diagnostics": "True"}),
            _one_step(synthetic_data_dir, **ALL_TERMS))


def test_the_terms_are_computed_as_configured(with_and_without_diagnostics):
    run_config, before, _, metrics, batch, (mean, var) = with_and_without_diagnostics[1]
    # G's samples of the step, as the step drew them, against the training set's moments.
    g_model, _ = gan.make_models(run_config)
    z = gan.step_z(before, run_config.batch_size, run_config.z_dim)
    fake = np.asarray(g_model.apply({"params": before.g_params,
                                     "batch_stats": before.g_batch_stats}, z, train=True,
                                    mutable=["batch_stats"])[0], np.float64)
    mean_gap = np.square(fake.mean(0) - mean).sum()
    var_gap = np.square(fake.var(0) - var).sum()
    assert metrics["g/moment_mean_gap"] == pytest.approx(mean_gap, rel=1e-4)
    assert metrics["g/moment_var_gap"] == pytest.approx(var_gap, rel=1e-4)
    # The mean part's own weight (0.05), the variance part the run's (0.1).
    assert metrics["g/moment_loss"] == pytest.approx(0.05 * mean_gap + 0.1 * var_gap, rel=1e-4)
    assert metrics["g/fm_loss"] > 0 and metrics["g/mmd_loss"] > 0
    assert metrics["g/loss"] == pytest.approx(
        metrics["g/adv_loss"] + metrics["g/moment_loss"] + metrics["g/fm_loss"]
        + 2.0 * metrics["g/mmd_loss"], rel=1e-5)
    assert not any(k.startswith("diag/") for k in metrics)  # diagnostics off
    assert "images_b" not in batch
    # D's minibatch-stddev channel: its logit layer reads one more feature per pixel.
    assert before.d_params["Dense_0"]["kernel"].shape[0] == 7 * 7 * (8 + 1)


def test_diagnostics_split_g_gradient_without_changing_the_step(with_and_without_diagnostics):
    (_, _, on, metrics, batch, (mean, var)), (_, _, off, plain, _, _) = \
        with_and_without_diagnostics
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), on, off)
    for key, value in plain.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # The two parts add up to G's gradient: |a + t|^2 = |a|^2 + |t|^2 + 2 cos |a| |t|.
    a, t, cos = (metrics[f"diag/{k}"] for k in ("adv_grad_norm", "term_grad_norm", "grad_cos"))
    assert -1 <= cos <= 1 and t > 0
    assert metrics["g/grad_norm"] ** 2 == pytest.approx(a ** 2 + t ** 2 + 2 * cos * a * t,
                                                        rel=1e-4)
    assert metrics["diag/grad_norm_ratio"] == pytest.approx(t / a, rel=1e-5)
    # The batch-noise floor: the terms for a second, disjoint real batch in place of the fakes.
    real_b = np.asarray(batch["images_b"], np.float64)
    assert not np.array_equal(batch["images_b"], batch["images"])
    assert metrics["diag/floor_moment_mean_gap"] == pytest.approx(
        np.square(real_b.mean(0) - mean).sum(), rel=1e-4)
    assert metrics["diag/floor"] == pytest.approx(
        metrics["diag/floor_moment_loss"] + metrics["diag/floor_fm_loss"]
        + 2.0 * metrics["diag/floor_mmd_loss"], rel=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("loss.moment_var_weight", "-0.5", "must be -1"),
    ("loss.mmd", "-1.0", "finite weight >= 0"),
    ("loss.moment_form", "'l3'", "choose one of l1, l2"),
    ("loss.moment_target", "'epoch'", "choose one of batch, dataset"),
    ("model.d_minibatch_std", "-2", "d_minibatch_std"),
])
def test_bad_term_settings_are_refused(synthetic_data_dir, field, value, message):
    run_config = grid.expand_grid(tiny_config(synthetic_data_dir, **{field: value}))[0]
    with pytest.raises(UserError, match=message):
        gan.check_config(run_config)


def test_feature_matching_needs_a_d_that_gives_features(synthetic_data_dir):
    run_config = grid.expand_grid(tiny_config(
        synthetic_data_dir, **{"model.arch": "'mlp'", "loss.feature_matching": "1.0"}))[0]
    with pytest.raises(UserError, match="feature matching needs D's features"):
        gan.check_terms(run_config)
