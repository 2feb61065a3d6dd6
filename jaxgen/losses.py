"""GAN losses, the moment-matching term of the moment-stabilization study, and its relatives
(fixed moments, an L2 form, feature matching, a pixel-space MMD) that the `moment_why` study
compares it with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def sigmoid_ce(logits: jax.Array, target: float) -> jax.Array:
    """Mean sigmoid cross-entropy of `logits` against a constant target (TF's
    `sigmoid_cross_entropy_with_logits` averaged over the batch)."""
    return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def d_loss(real_logits: jax.Array, fake_logits: jax.Array, real_label: float = 0.9,
           fake_label: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """D's loss on the real and on the fake batch; one-sided label smoothing puts real at 0.9."""
    return sigmoid_ce(real_logits, real_label), sigmoid_ce(fake_logits, fake_label)


def g_nonsaturating_loss(fake_logits: jax.Array) -> jax.Array:
    """-log D(G(z)) (Goodfellow et al. 2014, section 3)."""
    return sigmoid_ce(fake_logits, 1.0)


def moment_gaps(fake: jax.Array, real: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-pixel batch moments compared: sum_pixels |mean(fake) - mean(real)| and
    sum_pixels |var(fake) - var(real)|, means and (population) variances over the batch axis."""
    mean_gap = jnp.abs(fake.mean(0) - real.mean(0)).sum()
    var_gap = jnp.abs(fake.var(0) - real.var(0)).sum()
    return mean_gap, var_gap


MOMENT_FORMS = ("l1", "l2")


def moment_gaps_to(fake: jax.Array, mean: jax.Array, var: jax.Array, form: str = "l1"
                   ) -> tuple[jax.Array, jax.Array]:
    """`fake`'s per-pixel batch mean and (population) variance against target moments `mean`
    and `var` (a real batch's, or the training set's): the sums over pixels of their absolute
    differences (`l1`, the study's form) or of their squares (`l2`)."""
    if form not in MOMENT_FORMS:
        raise ValueError(f"unknown moment form {form!r}; choose one of {MOMENT_FORMS}")
    gap = jnp.abs if form == "l1" else jnp.square
    return gap(fake.mean(0) - mean).sum(), gap(fake.var(0) - var).sum()


def moment_loss(fake: jax.Array, real: jax.Array, weight: jax.Array | float,
                var_weight: jax.Array | float | None = None, form: str = "l1",
                target: tuple[jax.Array, jax.Array] | None = None
                ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """The study's term, `weight * (mean_gap + var_gap)` (weight 0.1 in the study), and the gaps.

    Its relatives: `var_weight` weighs the variance part on its own (`weight` then weighs the
    mean part alone); `form="l2"` squares the gaps; `target=(mean, var)` compares with fixed
    moments (the training set's) instead of the real batch's."""
    mean, var = (real.mean(0), real.var(0)) if target is None else target
    mean_gap, var_gap = moment_gaps_to(fake, mean, var, form)
    var_weight = weight if var_weight is None else var_weight
    return weight * mean_gap + var_weight * var_gap, (mean_gap, var_gap)


def feature_matching(fake_features: jax.Array, real_features: jax.Array) -> jax.Array:
    """Feature matching (Salimans et al. 2016, sec. 3.1): the squared L2 distance between the
    batch means of D's features of the fake and of the real batch, `|E f(G(z)) - E f(x)|^2`."""
    flat = fake_features.reshape(len(fake_features), -1)
    return jnp.square(flat.mean(0) - real_features.reshape(len(real_features), -1).mean(0)).sum()


def pixel_mmd(fake: jax.Array, real: jax.Array) -> jax.Array:
    """The squared maximum mean discrepancy between the fake and the real batch in pixel space
    (Gretton et al. 2012, the unbiased estimate of eq. 3) with a Gaussian kernel
    `exp(-|x - y|^2 / (2 s^2))` whose bandwidth `s` is the median heuristic: `s^2` is half the
    median squared distance between distinct images of the two batches pooled (held constant in
    the gradient)."""
    x = jnp.concatenate([fake.reshape(len(fake), -1), real.reshape(len(real), -1)])
    sq = jnp.square(x).sum(1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    n, m = len(fake), len(real)
    median = jnp.median(d2[jnp.triu_indices(n + m, 1)])
    k = jnp.exp(-d2 / jax.lax.stop_gradient(jnp.maximum(median, 1e-12)))
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    within = (lambda block, size: (block.sum() - jnp.trace(block)) / (size * (size - 1)))
    return within(kxx, n) + within(kyy, m) - 2.0 * kxy.mean()
