"""Building blocks shared by every model: activations and initializers named in config."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax

Activation = Callable[[jax.Array], jax.Array]


def activation(name: str, slope: float = 0.2) -> Activation:
    """`relu`, `leaky_relu` (with `slope`), `elu` or `swish`."""
    table = {
        "relu": nn.relu,
        "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=slope),
        "elu": nn.elu,
        "swish": nn.swish,
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]


def kernel_init(name: str) -> nn.initializers.Initializer:
    """`glorot_uniform` (Xavier, TF's default), `glorot_normal`, `he_uniform` or `he_normal`."""
    table = {
        "glorot_uniform": nn.initializers.glorot_uniform(),
        "glorot_normal": nn.initializers.glorot_normal(),
        "he_uniform": nn.initializers.he_uniform(),
        "he_normal": nn.initializers.he_normal(),
    }
    if name not in table:
        raise ValueError(f"unknown initializer {name!r}; choose one of {sorted(table)}")
    return table[name]


def kernel_and_bias_init(kernel: str, bias: float) -> dict:
    """Keyword arguments for Dense/Conv layers: a named kernel initializer, constant biases."""
    return {"kernel_init": kernel_init(kernel), "bias_init": nn.initializers.constant(bias)}


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
