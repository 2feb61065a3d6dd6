"""On-device augmentation of image batches, one random transform per example.

Everything is `jnp` on fixed shapes with randomness from a JAX key, so `apply` runs inside a
jitted, vmapped train step without host round trips. Images are NHWC in [-1, 1] with background
-1, so pixels shifted in are background, not gray.

`crop_pad=p` (pad p, random-crop back) and `translate=p` (shift in [-p, p]) draw the same integer
shifts; both are kept because papers name them differently, and both on compose (their shifts
add). `hflip` is wrong for digits (a mirrored 2 or 7 is not a digit); it is here for other data.
`fake` tells the trainer to augment G's samples too before D sees them, DiffAugment-style (Zhao
et al. 2020), so that G is not pushed to draw augmented digits; `apply` does not read it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

BACKGROUND = -1.0


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.crop_pad = 0  # pad by this many background pixels per side, random-crop back (0: off)
    c.translate = 0  # random shift in [-translate, translate] pixels per axis (0: off)
    c.hflip = False  # horizontal flip with probability 0.5; WRONG for digits
    c.fake = False  # the trainer also augments G's samples (DiffAugment); unread by `apply`
    return c


def enabled(cfg: ml_collections.ConfigDict) -> bool:
    """True if any transform is on, so callers can skip the key split and the copy."""
    return bool(cfg.crop_pad or cfg.translate or cfg.hflip)


def check_config(cfg: ml_collections.ConfigDict, size: int) -> None:
    """Refuses shifts that cannot work on `size`-pixel images: a shift of half the image or more
    can push the whole digit out of the frame."""
    for name in ("crop_pad", "translate"):
        value = cfg[name]
        if value < 0 or value >= size / 2:
            problem = "negative" if value < 0 else f"too large for {size}-pixel images"
            raise ValueError(f"augment.{name}={value} is {problem}. "
                             f"Fix: use 0 (off) to {(size - 1) // 2}.")


def _random_shift(images: jax.Array, key: jax.Array, pad: int) -> jax.Array:
    """Pad by `pad` background pixels, then cut an (H, W) window at a random offset per example:
    offset pad + s is a shift by s in [-pad, pad]. Slicing is linear, so gradients flow back."""
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                     constant_values=BACKGROUND)
    offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
    cut = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(cut)(padded, offsets)


def apply(images: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Random crop, then translate, then flip, each drawn per example from `key`.

    `cfg` holds Python values (static under jit). With nothing on, `images` itself is returned and
    `key` is unused. Shape and dtype are preserved and the result is differentiable in `images`.
    """
    if not enabled(cfg):
        return images
    check_config(cfg, min(images.shape[1:3]))
    crop_key, shift_key, flip_key = jax.random.split(key, 3)
    if cfg.crop_pad:
        images = _random_shift(images, crop_key, cfg.crop_pad)
    if cfg.translate:
        images = _random_shift(images, shift_key, cfg.translate)
    if cfg.hflip:
        flip = jax.random.bernoulli(flip_key, 0.5, (images.shape[0], 1, 1, 1))
        images = jnp.where(flip, images[:, :, ::-1], images)
    return images
