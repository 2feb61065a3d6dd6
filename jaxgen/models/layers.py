"""Building blocks shared by every model: activations and initializers named in config, and
convolutions written as shifted slices and one matrix product.

Why not `nn.Conv`/`nn.ConvTranspose`: on CPU, XLA's transposed convolution ran the DCGAN's
7x7x256 -> 14x14x32 layer (forward and backward) in 351 ms, the slice form in 118 ms; and under
`vmap` (one sweep member per kernel) XLA lowers a convolution to a grouped one, which its CPU
backend computes densely: 4x slower per member for the D layer, against 1.3x for the slice form
(`benchmarks/README.md`). Parameters have nn.Conv's and nn.ConvTranspose's names, shapes and
initializers, so the two are interchangeable in checkpoints.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def minibatch_std(x: jax.Array, group_size: int, eps: float = 1e-8) -> jax.Array:
    """Appends one channel: the standard deviation over each group of samples, averaged over
    features and pixels (Karras et al. 2018, sec. 3). Groups are samples i, i + B/G, ...; the
    group size is min(group_size, B), or B itself if that does not divide B."""
    b, h, w, c = x.shape
    g = min(group_size, b)
    if b % g:
        g = b
    std = jnp.sqrt(jnp.var(x.reshape(g, b // g, h, w, c), axis=0) + eps).mean(axis=(1, 2, 3))
    feature = jnp.tile(std, g)  # sample k * (B / G) + j belongs to group j
    return jnp.concatenate([x, jnp.broadcast_to(feature[:, None, None, None], (b, h, w, 1))], -1)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, tuple[int, int]]:
    """TF's SAME padding: the output size ceil(size / stride) and the (before, after) padding,
    the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def _taps(x: jax.Array, kernel: tuple[int, int], stride: int) -> jax.Array:
    """(B, H, W, C) -> (B, Ho, Wo, kh*kw*C): each output pixel's receptive field (SAME)."""
    (kh, kw), (_, h, w, _) = kernel, x.shape
    (ho, pad_h), (wo, pad_w) = same_padding(h, kh, stride), same_padding(w, kw, stride)
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    return jnp.concatenate([x[:, i:i + stride * (ho - 1) + 1:stride,
                              j:j + stride * (wo - 1) + 1:stride]
                            for i in range(kh) for j in range(kw)], axis=-1)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, method: str = "slices"
           ) -> jax.Array:
    """SAME convolution (TF's padding) of NHWC `x` with `kernel` (kh, kw, in, out), no bias:
    the receptive fields (`_taps`) times the flattened kernel, or with `method="xla"` XLA's own
    convolution (the same function). Which is faster depends on the layer and on what surrounds
    it (`benchmarks/README.md`): the slices for the DCGAN's stride-2 layers and the StyleGAN's
    D (whose R1 penalty differentiates twice), XLA's for the StyleGAN G's 16x16 and 32x32
    layers. Under `vmap` with a kernel per member XLA's form becomes a dense grouped
    convolution on CPU, 4x slower per member."""
    if method == "xla":
        pads = [same_padding(size, k, stride)[1] for size, k in zip(x.shape[1:3], kernel.shape)]
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if method != "slices":
        raise ValueError(f"conv2d method={method!r}: choose 'slices' or 'xla'")
    return _taps(x, kernel.shape[:2], stride) @ kernel.reshape(-1, kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def overlap_add(y: jax.Array, out_hw: tuple[int, int], kernel: tuple[int, int],
                stride: int) -> jax.Array:
    """The adjoint of `_taps`: (B, Ho, Wo, kh*kw, C) -> (B, H, W, C), each tap added back at
    its input position. Its gradient is therefore `_taps` of the cotangent, the values autodiff
    gives (only data moves), here `stored`: the transposed convolution's weight and input
    gradients both read it, and XLA:CPU otherwise gathered it twice, once in each layout, the
    transposed one at 1 GB/s (5.7 ms of the DCGAN step for its first layer)."""
    return _overlap_add_fwd(y, out_hw, kernel, stride)[0]


def _overlap_add_fwd(y, out_hw, kernel, stride):
    (kh, kw), (h, w), (_, ho, wo, _, _) = kernel, out_hw, y.shape
    (_, pad_h), (_, pad_w) = same_padding(h, kh, stride), same_padding(w, kw, stride)
    hp, wp = h + sum(pad_h), w + sum(pad_w)
    out = 0.0
    for t, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
        config = [(0, 0, 0), (i, hp - i - stride * (ho - 1) - 1, stride - 1),
                  (j, wp - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)]
        out = out + jax.lax.pad(y[..., t, :], jnp.zeros((), y.dtype), config)
    return out[:, pad_h[0]:pad_h[0] + h, pad_w[0]:pad_w[0] + w], None


def _overlap_add_bwd(out_hw, kernel, stride, _, g):
    del out_hw
    taps = stored(_taps(g, kernel, stride))
    return (taps.reshape(*taps.shape[:-1], kernel[0] * kernel[1], -1),)


overlap_add.defvjp(_overlap_add_fwd, _overlap_add_bwd)


def overlap_add_autodiff(y: jax.Array, out_hw: tuple[int, int], kernel: tuple[int, int],
                         stride: int) -> jax.Array:
    """`overlap_add` with autodiff's own gradient, the one its custom VJP replaces (for the
    tests and `benchmarks/levers.py`, which switches the lever off)."""
    return _overlap_add_fwd(y, out_hw, kernel, stride)[0]


class Conv(nn.Module):
    """nn.Conv with TF SAME padding, NHWC, kernel (kh, kw, in, out)."""
    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        return conv2d(x, kernel, _stride(self.strides)) + bias


class ConvTranspose(nn.Module):
    """nn.ConvTranspose(padding="SAME", transpose_kernel=True), TF's `conv2d_transpose`: the
    exact adjoint of the SAME convolution with kernel (kh, kw, out, in), output `strides` times
    larger."""
    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (kh, kw), stride, (b, h, w, c) = self.kernel_size, _stride(self.strides), x.shape
        kernel = self.param("kernel", self.kernel_init, (kh, kw, self.features, c))
        bias = self.param("bias", self.bias_init, (self.features,))
        y = x @ jnp.transpose(kernel, (3, 0, 1, 2)).reshape(c, kh * kw * self.features)
        y = y.reshape(b, h, w, kh * kw, self.features)
        return overlap_add(y, (h * stride, w * stride), (kh, kw), stride) + bias


def stored(x: jax.Array) -> jax.Array:
    """`x` computed on its own, into memory, instead of inside each loop that uses it.

    For random draws: XLA:CPU fuses a draw into the loops that consume it and there redoes it,
    key derivation included, for every element of the consumer. The DCGAN's three dropout
    masks cost 13.5 ms each on one core that way, against 1.4 ms drawn on their own and 1.3 ms
    applied; the StyleGAN's per-pixel noise, broadcast over 64 channels, was redrawn for each
    channel: 42 ms a step in one upsampling loop (`benchmarks/README.md`).
    `optimization_barrier` does not stop it (XLA:CPU expands barriers before it fuses); a
    conditional does. Its predicate is always true but reads `x`, so `x` is computed once,
    before it. Values unchanged (`tests/models/test_layers.py`). On other backends `x` is
    returned as it is: there the fusion is not a problem, and a GPU conditional reads its
    predicate on the host."""
    if jax.default_backend() != "cpu":
        return x
    first = x.reshape(-1)[:1]
    if x.dtype == jnp.bool_:
        always = jnp.max(first.astype(jnp.int32)) <= 1
    elif jnp.issubdtype(x.dtype, jnp.floating):
        always = jnp.all((first != first) | (first == first))  # NaN or not
    else:
        always = jnp.all((first | 1) != 0)
    return jax.lax.cond(always, lambda: x, lambda: jnp.zeros_like(x))


class Dropout(nn.Module):
    """nn.Dropout (same mask, same scaling, same rng stream and module name) with its mask
    `stored`."""
    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = stored(jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape))
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


def _stride(strides: tuple[int, int]) -> int:
    if strides[0] != strides[1]:
        raise ValueError(f"strides {strides}: only equal strides are supported")
    return strides[0]
