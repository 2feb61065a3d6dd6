"""Gaussian diffusion: schedules, the forward process, both samplers and the likelihood bound,
checked against closed forms and against a model that knows the data (a point mass)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import diffusion

T = 50


def point_mass_model(sched, x0):
    """The exact noise predictor when the data is the single image x0."""
    def eps(x, t):
        ab = sched["alpha_bar"][t][:, None, None, None]
        return (x - jnp.sqrt(ab) * x0[:x.shape[0]]) / jnp.sqrt(1 - ab)
    return eps


@functools.partial(jax.jit, static_argnames="steps")  # eta traced: both samplers share a program
def _sample_point_mass(sched, x0, key, eta, steps):
    return diffusion.sample(point_mass_model(sched, x0), sched, key, x0.shape, steps=steps,
                            eta=eta)


@pytest.mark.parametrize("name", diffusion.SCHEDULES)
def test_schedules_destroy_the_signal_monotonically(name):
    sched = diffusion.make_schedule(name, 1000)
    ab = np.asarray(sched["alpha_bar"])
    assert np.all(np.diff(ab) < 0) and ab[0] > 0.99 and ab[-1] < 1e-4
    assert np.allclose(sched["alpha_bar_prev"][1:], ab[:-1])


def test_linear_schedule_is_hos_and_rescales_with_t():
    sched = diffusion.make_schedule("linear", 1000)
    assert float(sched["betas"][0]) == pytest.approx(1e-4)
    assert float(sched["betas"][-1]) == pytest.approx(0.02)
    assert float(diffusion.make_schedule("linear", 100)["betas"][-1]) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        diffusion.make_schedule("sigmoid", 10)


def test_q_sample_has_the_marginal_moments():
    sched = diffusion.make_schedule("cosine", T)

    @jax.jit  # one program, not each op compiled on its own
    def moments(sched, key):
        x0 = jnp.full((20000, 1, 1, 1), 0.5)
        t = jnp.full((20000,), 10)
        x = diffusion.q_sample(sched, x0, t, jax.random.normal(key, x0.shape))
        return x.mean(), x.var()

    mean, var = moments(sched, jax.random.PRNGKey(0))
    ab = float(sched["alpha_bar"][10])
    assert float(mean) == pytest.approx(0.5 * np.sqrt(ab), abs=0.02)
    assert float(var) == pytest.approx(1 - ab, rel=0.05)


def test_loss_is_zero_for_the_exact_noise_predictor():
    sched = diffusion.make_schedule("linear", T)
    x0 = jnp.full((4, 6, 6, 1), 0.3)
    exact, zero = jax.jit(lambda sched, x0, key: (  # one program, not each op on its own
        diffusion.loss(point_mass_model(sched, x0), sched, x0, key),
        diffusion.loss(lambda x, t: jnp.zeros_like(x), sched, x0, key)))(
        sched, x0, jax.random.PRNGKey(1))
    assert float(exact) < 1e-8 and float(zero) == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_samplers_reach_the_data_of_an_exact_model(eta):
    sched = diffusion.make_schedule("linear", T)
    x0 = jnp.full((3, 6, 6, 1), -0.4)
    for steps in (T, 7):
        images = _sample_point_mass(sched, x0, jax.random.PRNGKey(2), eta, steps)
        assert np.abs(np.asarray(images) - np.asarray(x0)).max() < 1e-4


def test_ddim_follows_its_update_by_hand_and_ddpm_adds_noise():
    sched = diffusion.make_schedule("linear", T)
    shrink = lambda x, t: 0.5 * x  # any model: only the randomness differs
    key = jax.random.PRNGKey(3)
    run = jax.jit(lambda k, eta: diffusion.sample(shrink, sched, k, (2, 4, 4, 1), steps=10,
                                                  eta=eta, clip=False))
    # DDPM adds fresh noise at every step; DDIM's path is a function of x_T alone.
    assert not np.allclose(run(key, 1.0), run(key, 0.0))
    x_t = jax.random.normal(jax.random.split(key)[0], (2, 4, 4, 1))
    ddim = np.asarray(run(key, 0.0))
    by_hand, alpha_bar = np.asarray(x_t), np.asarray(sched["alpha_bar"])  # in NumPy: no compiles
    ts = diffusion.sampling_timesteps(T, 10)
    for t, t_prev in zip(ts, [*ts[1:], -1]):
        ab, ab_prev = alpha_bar[t], (alpha_bar[t_prev] if t_prev >= 0 else 1.0)
        eps = 0.5 * by_hand
        x0 = (by_hand - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        by_hand = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
    assert np.allclose(ddim, by_hand, atol=1e-4)
    assert diffusion.sampling_timesteps(T, 5).tolist() == [49, 37, 24, 12, 0]


def test_discretized_likelihood_sums_to_one_over_the_256_levels():
    levels = jnp.arange(256, dtype=jnp.float32) / 127.5 - 1.0
    total = jax.jit(lambda mean, log_scale: jnp.exp(diffusion.discretized_gaussian_log_likelihood(
        levels, jnp.full(256, mean), jnp.full(256, log_scale))).sum())  # one program for all
    for mean, log_scale in ((0.1, -2.0), (-0.9, -4.0), (0.0, 1.0)):
        assert float(total(mean, log_scale)) == pytest.approx(1.0, abs=1e-4)


def test_bound_estimate_is_unbiased_and_exact_with_every_term():
    sched = diffusion.make_schedule("linear", T)
    x0 = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 4, 4, 1)) / 127.5 - 1.0,
                     jnp.float32)
    model = lambda x, t: 0.3 * x  # a poor model, so every KL term matters
    bound = jax.jit(diffusion.nll_bpd, static_argnums=(0, 4))
    exact, estimate = (jax.tree.map(np.asarray, bound(model, sched, x0, jax.random.PRNGKey(k), n))
                       for k, n in ((4, T - 1), (5, 5)))
    se = float(estimate["bpd"].std() / np.sqrt(len(x0)))
    assert float(estimate["bpd"].mean()) == pytest.approx(float(exact["bpd"].mean()),
                                                          abs=4 * se + 0.05)
    parts = exact["prior"] + exact["decoder"] + exact["kl"]
    assert np.allclose(exact["bpd"], parts)
    # The exact model of a point mass pays (nearly) only the decoder's discretization.
    point = jax.tree.map(np.asarray, bound(point_mass_model(sched, x0[:1]), sched, x0[:1],
                                           jax.random.PRNGKey(6), T - 1))
    assert float(point["kl"][0]) < 1e-3 and float(point["bpd"][0]) < float(exact["bpd"][0])
    with pytest.raises(ValueError, match="terms"):
        diffusion.nll_bpd(model, sched, x0, jax.random.PRNGKey(4), terms=T)
