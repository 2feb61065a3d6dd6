"""The DDPM's noise-prediction network: a UNet of residual blocks with self-attention at the low
resolutions (Ho et al. 2020, appendix B; the PixelCNN++ / Wide ResNet layout), sized for MNIST.

    x_t (N, 28, 28, 1), t (N,) -> predicted noise eps (N, 28, 28, 1)

- Time: a sinusoidal embedding of t (Transformer positions) through two dense layers with Swish,
  added to every residual block as a per-channel shift.
- Residual block: GroupNorm -> Swish -> 3x3 conv -> + time -> GroupNorm -> Swish -> dropout ->
  3x3 conv (zero-initialized, so each block starts as the identity), plus a 1x1 conv on the skip
  when the width changes.
- Self-attention (one head, GroupNorm first, residual) after the blocks of every resolution in
  `attention_resolutions`, and in the middle.
- Down: `num_res_blocks` blocks per level, then a stride-2 conv (28 -> 14 -> 7); up: one more
  block per level, each taking a skip connection from the way down, then nearest x2 and a conv.

Config fields (`default_model_config`): `channels` (the first level's width), `channel_mult`
(a width multiplier per level; their count sets the levels), `num_res_blocks`,
`attention_resolutions` (sides, e.g. (7,)), `dropout`, `norm_groups`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen.models import layers


def default_model_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.arch = "unet"
    c.channels = 64
    c.channel_mult = (1, 2, 2)  # 28, 14, 7
    c.num_res_blocks = 2
    c.attention_resolutions = (14, 7)
    c.dropout = 0.1
    c.norm_groups = 16
    return c


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps t (N,) -> (N, dim): cosines then
    sines of t at geometrically spaced frequencies from 1 to 1/max_period."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResBlock(nn.Module):
    channels: int
    dropout: float
    groups: int

    @nn.compact
    def __call__(self, x, temb, train: bool):
        h = nn.swish(nn.GroupNorm(self.groups)(x))
        h = nn.Conv(self.channels, (3, 3))(h)
        h = h + nn.Dense(self.channels)(nn.swish(temb))[:, None, None, :]
        h = nn.swish(nn.GroupNorm(self.groups)(h))
        h = layers.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1))(x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels, residual."""

    groups: int

    @nn.compact
    def __call__(self, x):
        n, hgt, wid, c = x.shape
        h = nn.GroupNorm(self.groups)(x).reshape(n, hgt * wid, c)
        q, k, v = jnp.split(nn.Dense(3 * c)(h), 3, axis=-1)
        weights = jax.nn.softmax(jnp.einsum("nqc,nkc->nqk", q, k) / math.sqrt(c), axis=-1)
        out = nn.Dense(c, kernel_init=nn.initializers.zeros)(jnp.einsum("nqk,nkc->nqc",
                                                                        weights, v))
        return x + out.reshape(n, hgt, wid, c)


class UNet(nn.Module):
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (14, 7)
    dropout: float = 0.1
    norm_groups: int = 16

    @nn.compact
    def __call__(self, x, t, train: bool = False):
        temb = timestep_embedding(t, self.channels)
        temb = nn.Dense(4 * self.channels)(nn.swish(nn.Dense(4 * self.channels)(temb)))
        block = lambda ch: ResBlock(ch, self.dropout, self.norm_groups)

        h = nn.Conv(self.channels, (3, 3))(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = block(self.channels * mult)(h, temb, train)
                if h.shape[1] in self.attention_resolutions:
                    h = Attention(self.norm_groups)(h)
                skips.append(h)
            if level < len(self.channel_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
                skips.append(h)

        h = block(h.shape[-1])(h, temb, train)
        h = Attention(self.norm_groups)(h)
        h = block(h.shape[-1])(h, temb, train)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.channels * mult)(jnp.concatenate([h, skips.pop()], -1), temb,
                                                train)
                if h.shape[1] in self.attention_resolutions:
                    h = Attention(self.norm_groups)(h)
            if level:
                size = skips[-1].shape[1]  # 7 -> 14 -> 28 (odd sides come back exactly)
                h = jax.image.resize(h, (h.shape[0], size, size, h.shape[-1]), "nearest")
                h = nn.Conv(h.shape[-1], (3, 3))(h)

        h = nn.swish(nn.GroupNorm(self.norm_groups)(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


def make_model(cfg: ml_collections.ConfigDict) -> UNet:
    """The UNet of a `model` config; a ValueError names a width GroupNorm cannot split."""
    widths = {cfg.channels * m for m in cfg.channel_mult}
    bad = sorted(w for w in widths if w % cfg.norm_groups)
    if bad:
        raise ValueError(f"model.norm_groups={cfg.norm_groups} does not divide the widths {bad} "
                         f"(model.channels={cfg.channels} x model.channel_mult="
                         f"{tuple(cfg.channel_mult)})")
    if cfg.num_res_blocks < 1 or not cfg.channel_mult:
        raise ValueError("model.num_res_blocks must be >= 1 and model.channel_mult non-empty")
    return UNet(channels=cfg.channels, channel_mult=tuple(cfg.channel_mult),
                num_res_blocks=cfg.num_res_blocks,
                attention_resolutions=tuple(cfg.attention_resolutions), dropout=cfg.dropout,
                norm_groups=cfg.norm_groups)
