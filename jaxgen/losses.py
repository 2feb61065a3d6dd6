"""GAN losses and the moment-matching term of the moment-stabilization study."""

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


def moment_loss(fake: jax.Array, real: jax.Array, weight: jax.Array | float
                ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """The study's term, `weight * (mean_gap + var_gap)` (weight 0.1 in the study), and the gaps."""
    mean_gap, var_gap = moment_gaps(fake, real)
    return weight * (mean_gap + var_gap), (mean_gap, var_gap)
