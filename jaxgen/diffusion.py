"""Gaussian diffusion (Ho et al. 2020) as pure functions of a noise schedule and a noise-predicting
model `eps_fn(x_t, t) -> eps`.

- Schedules (`make_schedule`): "linear" (Ho et al.: beta from 1e-4 to 0.02 over T = 1000, scaled
  by 1000 / T for other T) and "cosine" (Nichol & Dhariwal 2021: alpha_bar(t) =
  cos^2(((t / T + s) / (1 + s)) pi / 2), s = 0.008, betas clipped at 0.999). A schedule is a dict
  of arrays, so one compiled step serves every schedule of a study.
- Training loss (`loss`): the simple objective, the MSE between the noise and its prediction at
  a uniformly drawn t.
- Sampling (`sample`): the generalized update of DDIM (Song et al. 2021, eq. 12) over a
  subsequence of `steps` timesteps, one `lax.scan`. `eta = 1` is DDPM's ancestral sampler
  (with Ho's sigma^2 = beta-tilde, the posterior variance, of the respaced chain; at
  `steps = T` exactly Ho's algorithm 2), `eta = 0` the deterministic DDIM.
- Likelihood (`nll_bpd`): the variational bound in bits per dimension on 8-bit data
  (Ho et al. eq. 5): the prior term KL(q(x_T | x_0) || N(0, I)), the decoder term (a discretized
  Gaussian over the 256 pixel levels, so the bound is on the discrete data itself, the quantity
  dequantized flows bound too) and the T - 1 KL terms between the true and the model's
  posteriors, with the model's variance fixed at beta-tilde. The KL terms are summed exactly
  when `terms = T - 1`, else estimated without bias from `terms` stratified timesteps per image.

Timesteps are 0-based: t = 0..T-1, x_0 the data; `alpha_bar[t]` is the product of
(1 - beta) up to and including t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models import layers

SCHEDULES = ("linear", "cosine")
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

SAMPLERS = {"ddpm": 1.0, "ddim": 0.0}  # the samplers by name, with their eta (`sample`)


def make_schedule(name: str, timesteps: int) -> dict[str, jax.Array]:
    """The arrays a schedule of `timesteps` steps is used through (float32, (T,) each)."""
    if name == "linear":
        scale = 1000.0 / timesteps
        betas = np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
    elif name == "cosine":
        s = 0.008
        f = lambda t: np.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2
        ts = np.arange(timesteps + 1, dtype=np.float64)
        betas = np.clip(1 - f(ts[1:]) / f(ts[:-1]), 0.0, 0.999)
    else:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
    posterior_var = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    return {k: jnp.asarray(v, jnp.float32) for k, v in {
        "betas": betas, "alpha_bar": alpha_bar, "alpha_bar_prev": alpha_bar_prev,
        # beta-tilde is 0 at t = 0; its log is clipped to t = 1's, as Ho et al. do.
        "posterior_log_var": np.log(np.append(posterior_var[1], posterior_var[1:])),
        "posterior_coef_x0": betas * np.sqrt(alpha_bar_prev) / (1 - alpha_bar),
        "posterior_coef_xt": (1 - alpha_bar_prev) * np.sqrt(1 - betas) / (1 - alpha_bar),
    }.items()}


def _at(array: jax.Array, t: jax.Array) -> jax.Array:
    """array[t] shaped to broadcast over NHWC images."""
    return array[t][:, None, None, None]


def q_sample(sched: dict, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t ~ q(x_t | x_0): sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise."""
    ab = _at(sched["alpha_bar"], t)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise


def loss(eps_fn: EpsFn, sched: dict, x0: jax.Array, key: jax.Array) -> jax.Array:
    """The simple objective: E_{t, noise} |noise - eps(x_t, t)|^2, averaged over pixels and the
    batch, at t uniform over 0..T-1 (one draw per image)."""
    t_key, n_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, sched["betas"].shape[0])
    # stored: otherwise XLA:CPU redraws the noise inside each loop that uses it (the CPU-scale
    # DDPM step took 227 ms that way, 197 ms stored; `layers.stored`)
    noise = layers.stored(jax.random.normal(n_key, x0.shape))
    return loss_at(eps_fn, sched, x0, t, noise)


def loss_at(eps_fn: EpsFn, sched: dict, x0: jax.Array, t: jax.Array,
            noise: jax.Array) -> jax.Array:
    """The simple objective at given timesteps and noise (a fixed validation draw)."""
    return jnp.mean(jnp.square(noise - eps_fn(q_sample(sched, x0, t, noise), t)))


def predict_x0(sched: dict, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    ab = _at(sched["alpha_bar"], t)
    return (x_t - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)


def sampling_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """`steps` timesteps evenly spread over 0..T-1, descending from T-1 and ending at 0."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps {steps} must be in 1..{timesteps} (the schedule's T)")
    return np.round(np.linspace(timesteps - 1, 0, steps)).astype(np.int32)


def sample(eps_fn: EpsFn, sched: dict, key: jax.Array, shape: tuple[int, ...], *, steps: int,
           eta: float, clip: bool = True) -> jax.Array:
    """Images drawn from N(0, I) through `steps` timesteps (DDPM ancestral at eta = 1, DDIM at
    eta = 0), in [-1, 1] when `clip` (x_0's prediction is clipped at each step, as Ho et al.
    do). Jit-compatible: `steps` and `shape` must be static."""
    ts = jnp.asarray(sampling_timesteps(sched["betas"].shape[0], steps))
    prev = jnp.append(ts[1:], -1)  # -1: the last step lands on x_0
    init_key, loop_key = jax.random.split(key)
    x = jax.random.normal(init_key, shape)

    def body(x, inputs):
        t, t_prev, i = inputs
        tt = jnp.full((shape[0],), t)
        eps = eps_fn(x, tt)
        x0 = predict_x0(sched, x, tt, eps)
        if clip:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x - jnp.sqrt(sched["alpha_bar"][t]) * x0) / jnp.sqrt(
                1 - sched["alpha_bar"][t])
        ab = sched["alpha_bar"][t]
        ab_prev = jnp.where(t_prev >= 0, sched["alpha_bar"][jnp.maximum(t_prev, 0)], 1.0)
        sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        noise = jax.random.normal(jax.random.fold_in(loop_key, i), shape)
        x = (jnp.sqrt(ab_prev) * x0 + jnp.sqrt(jnp.maximum(1 - ab_prev - sigma ** 2, 0.0)) * eps
             + sigma * noise)
        return x, None

    x, _ = jax.lax.scan(body, x, (ts, prev, jnp.arange(steps)))
    return jnp.clip(x, -1.0, 1.0) if clip else x


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _std_normal_cdf(x: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array,
                                        log_scale: jax.Array) -> jax.Array:
    """log P(x) of 8-bit data scaled to [-1, 1] (bins of width 2/255) under N(mean, scale^2)
    integrated over each pixel's bin; the edge bins take the tails. Elementwise, in nats."""
    inv_std = jnp.exp(-log_scale)
    upper = _std_normal_cdf(inv_std * (x - mean + 1.0 / 255))
    lower = _std_normal_cdf(inv_std * (x - mean - 1.0 / 255))
    log_upper = jnp.log(jnp.maximum(upper, 1e-12))
    log_one_minus_lower = jnp.log(jnp.maximum(1.0 - lower, 1e-12))
    log_mid = jnp.log(jnp.maximum(upper - lower, 1e-12))
    return jnp.where(x < -0.999, log_upper, jnp.where(x > 0.999, log_one_minus_lower, log_mid))


def _per_image_bits(nats: jax.Array) -> jax.Array:
    """Elementwise nats -> bits per dimension of each image (mean over its pixels)."""
    return nats.reshape(nats.shape[0], -1).mean(1) / math.log(2.0)


def vb_term_bpd(eps_fn: EpsFn, sched: dict, x0: jax.Array, t: jax.Array,
                noise: jax.Array) -> jax.Array:
    """One term of the bound per image, in bits/dim: the decoder's -log p(x_0 | x_1) where t = 0,
    else KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), at x_t drawn with `noise`."""
    x_t = q_sample(sched, x0, t, noise)
    log_var = _at(sched["posterior_log_var"], t)
    true_mean = _at(sched["posterior_coef_x0"], t) * x0 + _at(sched["posterior_coef_xt"], t) * x_t
    x0_pred = jnp.clip(predict_x0(sched, x_t, t, eps_fn(x_t, t)), -1.0, 1.0)
    model_mean = (_at(sched["posterior_coef_x0"], t) * x0_pred
                  + _at(sched["posterior_coef_xt"], t) * x_t)
    kl = _per_image_bits(normal_kl(true_mean, log_var, model_mean, log_var))
    decoder = -_per_image_bits(discretized_gaussian_log_likelihood(x0, model_mean,
                                                                   0.5 * log_var))
    return jnp.where(t == 0, decoder, kl)


def prior_bpd(sched: dict, x0: jax.Array) -> jax.Array:
    """KL(q(x_T | x_0) || N(0, I)) per image in bits/dim (near 0 for a good schedule)."""
    ab = sched["alpha_bar"][-1]
    return _per_image_bits(normal_kl(jnp.sqrt(ab) * x0, jnp.log(1 - ab), 0.0, 0.0))


def nll_bpd(eps_fn: EpsFn, sched: dict, x0: jax.Array, key: jax.Array,
            terms: int) -> dict[str, jax.Array]:
    """The variational bound on -log2 p(x_0) per dimension, per image: the prior term, the
    decoder term and the T - 1 KL terms, these from `terms` timesteps per image, one in each of
    `terms` equal strata of 1..T-1 at a random place, weighted by the stratum's size (exact when
    `terms = T - 1`). `terms` must be static. Returns per-image `bpd`, `prior`, `decoder`, `kl`."""
    num = sched["betas"].shape[0] - 1  # the KL terms, t = 1..T-1
    if not 1 <= terms <= num:
        raise ValueError(f"bits/dim terms {terms} must be in 1..{num} (T - 1)")
    edges = np.linspace(1, num + 1, terms + 1).astype(np.int64)  # strata [edges[k], edges[k+1])
    sizes = jnp.asarray(edges[1:] - edges[:-1], jnp.float32)
    u_key, n_key = jax.random.split(key)
    u = jax.random.uniform(u_key, (terms, x0.shape[0]))
    strata = (jnp.asarray(edges[:-1])[:, None] + jnp.floor(u * sizes[:, None])).astype(jnp.int32)
    # One pass over t = 0 (the decoder) and the strata's timesteps.
    t_all = jnp.concatenate([jnp.zeros((1, x0.shape[0]), jnp.int32), strata])

    def term(carry, inputs):
        t, k = inputs
        noise = jax.random.normal(jax.random.fold_in(n_key, k), x0.shape)
        return carry, vb_term_bpd(eps_fn, sched, x0, t, noise)

    _, values = jax.lax.scan(term, None, (t_all, jnp.arange(terms + 1)))
    decoder, kl = values[0], (values[1:] * sizes[:, None]).sum(0)
    prior = prior_bpd(sched, x0)
    return {"bpd": prior + decoder + kl, "prior": prior, "decoder": decoder, "kl": kl}

