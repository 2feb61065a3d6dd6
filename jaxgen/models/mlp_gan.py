"""The moment-stabilization study's first test: a feed-forward GAN on flattened 28x28 images.

G: z -> Dense 128 -> LReLU 0.01 -> Dense 784 -> tanh -> (28, 28, 1)
D: x -> flatten -> Dense 128 -> LReLU 0.01 -> [Dropout] -> Dense 1 (a logit)
No batch norm, so G samples the same in either batch-norm mode.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen.models import layers


class Generator(nn.Module):
    hidden: int = 128
    activation: str = "leaky_relu"
    slope: float = 0.01
    kernel_init: str = "glorot_uniform"
    bias_init: float = 0.0

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
        init = layers.kernel_and_bias_init(self.kernel_init, self.bias_init)
        x = layers.activation(self.activation, self.slope)(nn.Dense(self.hidden, **init)(z))
        return jnp.tanh(nn.Dense(28 * 28, **init)(x)).reshape(-1, 28, 28, 1)


class Discriminator(nn.Module):
    hidden: int = 128
    activation: str = "leaky_relu"
    slope: float = 0.01
    kernel_init: str = "glorot_uniform"
    bias_init: float = 0.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
        init = layers.kernel_and_bias_init(self.kernel_init, self.bias_init)
        x = nn.Dense(self.hidden, **init)(x.reshape(x.shape[0], -1))
        x = layers.activation(self.activation, self.slope)(x)
        x = nn.Dropout(self.dropout, deterministic=deterministic or not self.dropout)(x)
        return nn.Dense(1, **init)(x)[:, 0]


def make_models(model: ml_collections.ConfigDict) -> tuple[Generator, Discriminator]:
    shared = dict(activation=model.activation, slope=model.slope, kernel_init=model.kernel_init,
                  bias_init=model.bias_init)
    if model.norm != "none":
        raise ValueError(f"the feed-forward GAN has no normalization layers, so "
                         f"model.norm={model.norm} cannot apply; it takes model.norm=none")
    return Generator(hidden=model.g_hidden, **shared), Discriminator(
        hidden=model.d_hidden, dropout=model.d_dropout, **shared)
