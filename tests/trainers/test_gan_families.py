"""The conditional GAN and the StyleGAN through the shared GAN trainer: R1, G's moving average,
conditioning, 32x32 models, resume (tiny models on synthetic data)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS_DIR, TINY

from jaxgen import config as config_lib
from jaxgen import data, grid, log, optim, sharding
from jaxgen.trainers import gan

COMMON = {k: v for k, v in TINY.items() if not k.startswith("model.")}
TINY_MODELS = {
    "cgan_mnist": {"model.g_width": "4", "model.d_channels": "(4,8)", "model.cond": "embed",
                   "model.embed_dim": "3", "moment_weights": "(0.0,)"},
    "stylegan_mnist": {"model.w_dim": "8", "model.mapping_layers": "1",
                       "model.g_channels": "(4,4,4,4)", "model.d_channels": "(4,4,4,4)",
                       "model.mbstd_group": "2", "moment_weights": "(0.0,)",
                       "num_fixed_samples": "10", "eval_samples": "100",
                       "eval_examples": "100", "loss.r1_every": "2", "loss.r1_gamma": "1.0",
                       "g_ema_half_life": "100.0", "g_ema_rampup": "0.0",
                       "batch_size": "10"},
}


def tiny(exp: str, data_dir: str, **overrides):
    config = config_lib.load_config(exp, CONFIGS_DIR)
    config_lib.apply_overrides(config, {**COMMON, "variants": "()", **TINY_MODELS[exp],
                                        **overrides})
    config.data_dir = data_dir
    return config


def _setup(exp, data_dir, **overrides):
    run = grid.expand_grid(tiny(exp, data_dir, **overrides))[0]
    fns = gan.build(run)
    splits = data.mnist_splits(data_dir, 100)
    # Placed as the trainer places it, so that its compiled train step serves here too.
    dataset = jax.device_put({"images": splits.train_images, "labels": splits.train_labels},
                             sharding.replicated(sharding.make_mesh()))
    state = fns.create(jax.random.PRNGKey(0), learning_rate=1e-3, moment_weight=0.0)
    return run, fns, dataset, state, jnp.arange(len(splits.train_images))


def test_r1_penalty_against_hand_computed_gradients():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
    w = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 4, 1))
    # D linear in x: grad_x D = w for every image, so R1 = |w|^2.
    linear = gan.r1_penalty(lambda images: (images * w).sum((1, 2, 3)), x)
    assert float(linear) == pytest.approx(float((w ** 2).sum()), rel=1e-5)
    # D = sum x^2: grad_x D = 2x, so R1 = mean over images of |2x|^2.
    quadratic = gan.r1_penalty(lambda images: (images ** 2).sum((1, 2, 3)), x)
    expected = np.mean(np.sum((2 * np.asarray(x)) ** 2, axis=(1, 2, 3)))
    assert float(quadratic) == pytest.approx(float(expected), rel=1e-5)


def test_ema_update_and_half_life():
    assert optim.ema_update({"a": jnp.ones(2)}, {"a": 3 * jnp.ones(2)}, 0.75)["a"].tolist() == [
        1.5, 1.5]
    decay = float(optim.ema_decay(1000.0, 10, 1e9, rampup=0.0))
    assert decay ** 100 == pytest.approx(0.5, rel=1e-5)  # 100 steps of 10 images: halved
    # Ramp-up: after 2,000 images the half-life is at most 0.05 * 2,000 = 100 images.
    assert float(optim.ema_decay(1000.0, 10, 2000, rampup=0.05)) ** 10 == pytest.approx(0.5)
    assert float(optim.ema_decay(1000.0, 10, 1e6, rampup=0.05)) == pytest.approx(decay)


def test_stylegan_resumes_exactly_pads_images_applies_lazy_r1_and_averages_g(
        synthetic_data_dir, tmp_path):
    """One test, so that the StyleGAN step compiles once: an interrupted run ends equal to a
    straight one (R1's step, G's average, w_avg and the noise all resume; the DCGAN's tests
    cover the rest of the machinery), then two steps by hand check padding, lazy R1 and G's
    average."""
    # The StyleGAN notebook's tiny scale (no validation pass), which its test then runs in this
    # process on the functions compiled here (tests/conftest.py: UNITS).
    notebook_scale = {"eval_examples": "0"}

    def train(workdir, epochs):
        return gan.train_and_evaluate(grid.expand_grid(tiny(
            "stylegan_mnist", synthetic_data_dir, epochs=str(epochs), **notebook_scale))[0],
            str(workdir))

    straight = jax.device_get(train(tmp_path / "straight", 2))
    train(tmp_path / "resumed", 1)
    resumed = jax.device_get(train(tmp_path / "resumed", 2))
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    logged = [r for r in log.read_metrics(str(tmp_path / "resumed")) if r["split"] == "train"]
    assert logged[-1]["step"] == 40 and logged[-1]["d/r1"] > 0  # the means of 5 steps hold R1

    run, fns, dataset, state, perm = _setup("stylegan_mnist", synthetic_data_dir, **notebook_scale)
    batch = fns.get_batch(dataset, perm, 0, 0)
    assert batch["images"].shape == (10, 32, 32, 1)
    np.testing.assert_array_equal(batch["images"][:, :2], -1.0)  # MNIST padded by 2 pixels
    np.testing.assert_allclose(batch["images"][:, 2:30, 2:30],
                               data.to_float(dataset["images"][:10]), atol=1e-6)
    before = jax.device_get(state)
    state, m0 = fns.steps(state, dataset, perm, 0, 0, num_steps=1)  # compiled above
    after = jax.device_get(state)
    state, m1 = fns.steps(state, dataset, perm, 1, 1, num_steps=1)
    m0, m1 = (jax.tree.map(lambda x: x[0], m) for m in (m0, m1))
    assert float(m0["d/r1"]) > 0 and float(m1["d/r1"]) == 0.0  # every r1_every = 2 steps
    for m in (m0, m1):  # the logged D loss leaves R1 out
        assert float(m["d/loss"]) == pytest.approx(
            float(m["d/loss_real"] + m["d/loss_fake"] + m["d/penalty"]), rel=1e-6)
    decay = 0.5 ** (10 / 100.0)
    expected = jax.tree.map(lambda a, p: decay * a + (1 - decay) * p,
                            before.g_ema_params, after.g_params)
    jax.tree.map(lambda e, got: np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-7),
                 expected, after.g_ema_params)
    # w_avg (StyleGAN's truncation centre) moves in training only.
    assert not np.array_equal(before.g_batch_stats["w_avg"], after.g_batch_stats["w_avg"])
