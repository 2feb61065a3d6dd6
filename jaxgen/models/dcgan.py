"""The moment-stabilization study's DCGAN for 28x28 images (the reference notebooks' layers).

G: z -> Dense 1024 -> BN -> LReLU -> Dense 7*7*256 -> (7, 7, 256) -> BN -> LReLU
     -> ConvT 32 (3x3, /2) -> BN -> LReLU -> ConvT 1 (3x3, /2) -> tanh        13,037,697 params
D: x -> Conv 32 (3x3, /2) -> BN -> LReLU -> Conv 256 (3x3, /2) -> BN -> LReLU
     -> flatten -> Dropout 0.5 -> Dense 1 (logit)                                  87,425 params
     (`model.d_minibatch_std` > 0 adds a minibatch-stddev channel before the flatten)

Batch norm is TF's layer (momentum 0.99, epsilon 1e-3). The transposed convolutions are TF's
`conv2d_transpose` with SAME padding: the exact adjoint of a stride-2 SAME convolution, as TF
aligns its output. Both convolutions are `layers.Conv`/`layers.ConvTranspose` (slices and a matrix
product: 3x faster on CPU than XLA's, and cheap under `vmap`; same parameters as Flax's).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen.models import layers

NORMS = ("batch", "none")


def _norm_layer(name: str, **kwargs):
    """A factory of the normalization layer: batch norm (TF's), or none (the identity)."""
    if name == "batch":
        return functools.partial(nn.BatchNorm, **kwargs)
    if name == "none":
        return lambda: lambda x: x
    raise ValueError(f"unknown normalization {name!r}; choose one of {NORMS}")


class Generator(nn.Module):
    hidden: int = 1024
    base_channels: int = 256
    mid_channels: int = 32
    out_channels: int = 1
    activation: str = "leaky_relu"
    slope: float = 0.2
    kernel_init: str = "glorot_uniform"
    bias_init: float = 0.1
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    norm: str = "batch"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        """`train=True` normalizes with batch statistics (and updates the moving averages when
        `batch_stats` is mutable); `train=False` uses the moving averages."""
        init = layers.kernel_and_bias_init(self.kernel_init, self.bias_init)
        act = layers.activation(self.activation, self.slope)
        norm = _norm_layer(self.norm, use_running_average=not train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon)
        up = functools.partial(layers.ConvTranspose, kernel_size=(3, 3), strides=(2, 2), **init)
        x = act(norm()(nn.Dense(self.hidden, **init)(z)))
        x = nn.Dense(7 * 7 * self.base_channels, **init)(x)
        x = act(norm()(x.reshape(-1, 7, 7, self.base_channels)))
        x = act(norm()(up(self.mid_channels)(x)))
        return jnp.tanh(up(self.out_channels)(x))


class Discriminator(nn.Module):
    channels: tuple[int, ...] = (32, 256)
    activation: str = "leaky_relu"
    slope: float = 0.2
    kernel_init: str = "glorot_uniform"
    bias_init: float = 0.1
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dropout: float = 0.5
    norm: str = "batch"
    minibatch_std: int = 0  # > 0: a minibatch-stddev channel over groups of this many samples

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
        """Returns one logit per image. Batch norm always uses batch statistics and dropout is
        on unless `deterministic`, as in the reference (which never switched D to inference).
        With `minibatch_std`, the last convolution's output gains StyleGAN's minibatch-stddev
        channel (`layers.minibatch_std`) before the logit. D's features, the flattened input of
        its logit layer before dropout, are sown as `intermediates/features` (feature
        matching reads them)."""
        init = layers.kernel_and_bias_init(self.kernel_init, self.bias_init)
        act = layers.activation(self.activation, self.slope)
        norm = _norm_layer(self.norm, use_running_average=False, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon)
        for channels in self.channels:
            x = act(norm()(layers.Conv(channels, (3, 3), strides=(2, 2), **init)(x)))
        if self.minibatch_std:
            x = layers.minibatch_std(x, self.minibatch_std)
        x = x.reshape(x.shape[0], -1)
        self.sow("intermediates", "features", x)
        x = layers.Dropout(self.dropout, deterministic=deterministic)(x)
        return nn.Dense(1, **init)(x)[:, 0]


def make_models(model: ml_collections.ConfigDict) -> tuple[Generator, Discriminator]:
    """G and D from the `model` sub-config."""
    shared = dict(activation=model.activation, slope=model.slope, kernel_init=model.kernel_init,
                  bias_init=model.bias_init, bn_momentum=model.bn_momentum,
                  bn_epsilon=model.bn_epsilon, norm=model.norm)
    g = Generator(hidden=model.g_hidden, base_channels=model.g_base_channels,
                  mid_channels=model.g_mid_channels,
                  out_channels=model.get("image_channels", 1), **shared)
    d = Discriminator(channels=tuple(model.d_channels), dropout=model.d_dropout,
                      minibatch_std=model.get("d_minibatch_std", 0), **shared)
    return g, d
