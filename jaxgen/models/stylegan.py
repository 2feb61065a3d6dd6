"""A small StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN") for 32x32 single-channel images (MNIST padded to 32).

G: z -> 2nd-moment normalization -> `mapping_layers` x (EqualDense w_dim, lr x0.01, LReLU) -> w
   -> broadcast to 11 ws (7 modulated convs + 4 ToRGBs), style mixing (train), truncation
   const 4x4xC4 -> [4]  ModConv 3x3 -> ToRGB
                -> [8]  up x2 -> ModConv 3x3 -> ModConv 3x3 -> ToRGB   (likewise 16, 32)
   image = sum over resolutions of each ToRGB, upsampled x2 between them (skip architecture);
   linear output, (B, 32, 32, 1).
   ModConv: style = EqualDense(w) (bias 1); weight modulated and demodulated; + strength * noise
   (strength learned, init 0); + bias; LReLU. ToRGB: modulated 1x1 conv without demodulation,
   + bias. Upsampling is bilinear (`upsample2`).
D: x -> FromRGB (EqualConv 1x1, LReLU) at 32 -> residual blocks 32->16->8->4
   -> minibatch stddev (+1 channel) -> EqualConv 3x3, LReLU -> flatten -> EqualDense, LReLU
   -> EqualDense 1 (a logit).
   Block: [EqualConv 3x3, LReLU, EqualConv 3x3, LReLU, 2x2 average pool]
          + [2x2 average pool, EqualConv 1x1 without bias], the sum times 1/sqrt(2).
LReLU is leaky ReLU 0.2 times sqrt(2) (unit gain) everywhere. Default sizes (`default_model_config`)
are small for CPU training: G 275,163 parameters for 100-dim z, D 218,417 (`w_dim=128`,
4 mapping layers, `g_channels=(64, 64, 32, 16)`, `d_channels=(16, 32, 64, 64)`).

Randomness comes from the "noise" RNG stream only: with it, G draws per-layer noise images and
(when `train`) style-mixing latents; without it, noise is zero and mixing off, so G is a
deterministic function of z (as for evaluation and sampling). Equalized learning rate: parameters
are stored at unit scale and scaled at run time (`EqualDense`, `EqualConv`). Convolutions are
`layers.conv2d` (slices and one matrix product; XLA's own convolution for G's layers from 16x16
up, `XLA_CONV_MIN_PIXELS`); the modulated convolution is StyleGAN2's
"non-fused" form (scale the input, convolve with the shared kernel, scale the output), exactly
equal to convolving each sample with its own modulated weight.
"""

from __future__ import annotations

import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxgen.models import layers

IMAGE_SIZE = 32
RESOLUTIONS = (4, 8, 16, 32)  # the generator's, in order; the discriminator's is the reverse
SQRT2 = math.sqrt(2.0)


XLA_CONV_MIN_PIXELS = 256  # G's modulated convolutions on maps this large use XLA's convolution


def lrelu(x: jax.Array) -> jax.Array:
    """Leaky ReLU 0.2 with StyleGAN's gain sqrt(2), which keeps unit-variance activations."""
    return nn.leaky_relu(x, 0.2) * SQRT2


def upsample2(x: jax.Array) -> jax.Array:
    """x2 bilinear upsampling of NHWC `x`: half-pixel centres, edges clamped (as
    `jax.image.resize(method="bilinear")`). In the interior this is StyleGAN2's upsampling
    filter [1, 3, 3, 1] / 4 per axis: each new pixel is 3/4 its nearer and 1/4 its farther
    neighbour."""
    def along(x: jax.Array, axis: int) -> jax.Array:
        n = x.shape[axis]
        first, last = jax.lax.slice_in_dim(x, 0, 1, axis=axis), jax.lax.slice_in_dim(
            x, n - 1, n, axis=axis)
        prev = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        shape = list(x.shape)
        shape[axis] = 2 * n
        return jnp.stack([even, odd], axis + 1).reshape(shape)
    return along(along(x, 1), 2)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling, stride 2, of NHWC `x` (even sizes)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def modulated_conv(x: jax.Array, kernel: jax.Array, styles: jax.Array, demodulate: bool = True,
                   eps: float = 1e-8) -> jax.Array:
    """StyleGAN2's modulated convolution (SAME): x (B, H, W, I), kernel (kh, kw, I, O),
    styles (B, I). Sample b is convolved with w'_b = kernel * styles[b] (over I), demodulated to
    w'_b / sqrt(sum_{kh, kw, I} w'_b^2 + eps) when `demodulate`. Computed without per-sample
    kernels: conv(x * styles, kernel) * demod, with demod[b, o] = rsqrt(sum_i styles[b, i]^2
    sum_{kh, kw} kernel[..., i, o]^2 + eps) (Karras et al. 2020, eqs. 1-3)."""
    # XLA's convolution from 16x16 up: the step took 336 ms against 394 with the slices there
    # (`benchmarks/README.md`).
    method = "xla" if x.shape[1] * x.shape[2] >= XLA_CONV_MIN_PIXELS else "slices"
    y = layers.conv2d(x * styles[:, None, None, :], kernel, method=method)
    if demodulate:
        demod = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(kernel), axis=(0, 1)) + eps)
        y = y * demod[:, None, None, :]
    return y


def _equalized_param(module: nn.Module, shape: tuple[int, ...], fan_in: int,
                     lr_mul: float) -> jax.Array:
    """A weight stored as N(0, 1 / lr_mul^2) and used times lr_mul / sqrt(fan_in): its initial
    effective scale is He's, independent of lr_mul, while its learning rate is lr_mul times
    smaller (Karras et al. 2018, sec. 4.1; 2019, sec. C for lr_mul)."""
    kernel = module.param("kernel", nn.initializers.normal(1.0 / lr_mul), shape)
    return kernel * (lr_mul / math.sqrt(fan_in))


class EqualDense(nn.Module):
    """Dense layer with equalized learning rate; the bias is stored as `bias_init` and used
    times `lr_mul`."""
    features: int
    lr_mul: float = 1.0
    bias_init: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        y = x @ _equalized_param(self, (fan_in, self.features), fan_in, self.lr_mul)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
            y = y + bias * self.lr_mul
        return y


class EqualConv(nn.Module):
    """SAME convolution (NHWC, kernel (k, k, in, out)) with equalized learning rate."""
    features: int
    kernel_size: int = 3
    lr_mul: float = 1.0
    bias_init: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        y = layers.conv2d(x, _equalized_param(self, (k, k, c, self.features), k * k * c,
                                              self.lr_mul))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
            y = y + bias * self.lr_mul
        return y


class MappingNetwork(nn.Module):
    """z -> w: z normalized to unit second moment, then `num_layers` EqualDense + LReLU."""
    w_dim: int = 128
    num_layers: int = 4
    lr_mul: float = 0.01

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)
        for i in range(self.num_layers):
            x = lrelu(EqualDense(self.w_dim, lr_mul=self.lr_mul, name=f"fc{i}")(x))
        return x


class StyledConv(nn.Module):
    """Modulated 3x3 convolution (after x2 upsampling if `up`), noise, bias, LReLU."""
    features: int
    up: bool = False
    noise: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        if self.up:
            x = upsample2(x)
        c = x.shape[-1]
        styles = EqualDense(c, bias_init=1.0, name="affine")(w)
        kernel = self.param("kernel", nn.initializers.normal(1.0), (3, 3, c, self.features))
        x = modulated_conv(x, kernel / math.sqrt(9 * c), styles)
        if self.noise:
            strength = self.param("noise_strength", nn.initializers.zeros, ())
            if self.has_rng("noise"):
                x = x + strength * layers.stored(
                    jax.random.normal(self.make_rng("noise"), (*x.shape[:3], 1)))
        return lrelu(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to one channel, without demodulation, plus bias."""
    channels: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        c = x.shape[-1]
        styles = EqualDense(c, bias_init=1.0, name="affine")(w)
        kernel = self.param("kernel", nn.initializers.normal(1.0), (1, 1, c, self.channels))
        x = modulated_conv(x, kernel / math.sqrt(c), styles, demodulate=False)
        return x + self.param("bias", nn.initializers.zeros, (self.channels,))


def num_ws(channels: tuple[int, ...]) -> int:
    """Modulated convs (one at 4x4, two above) plus one ToRGB per resolution."""
    return 3 * len(channels) - 1


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, 32, 32, 1); `channels` per resolution 4, 8, 16, 32.
    ws are used in order: per resolution its convs, then its ToRGB."""
    channels: tuple[int, ...] = (64, 64, 32, 16)
    noise: bool = True

    @nn.compact
    def __call__(self, ws: jax.Array) -> jax.Array:
        c0 = self.channels[0]
        const = self.param("const", nn.initializers.normal(1.0), (4, 4, c0))
        x = jnp.broadcast_to(const, (ws.shape[0], 4, 4, c0))
        ws = iter(jnp.moveaxis(ws, 1, 0))
        image = None
        for level, channels in enumerate(self.channels):
            res = 4 * 2 ** level
            if level > 0:
                x = StyledConv(channels, up=True, noise=self.noise, name=f"b{res}_conv0")(
                    x, next(ws))
            x = StyledConv(channels, noise=self.noise, name=f"b{res}_conv{min(level, 1)}")(
                x, next(ws))
            rgb = ToRGB(name=f"b{res}_torgb")(x, next(ws))
            image = rgb if image is None else upsample2(image) + rgb
        return image


class Generator(nn.Module):
    """Mapping and synthesis, with the running mean of w (`batch_stats/w_avg`) for truncation,
    and style mixing regularization in training."""
    w_dim: int = 128
    mapping_layers: int = 4
    mapping_lr_mul: float = 0.01
    channels: tuple[int, ...] = (64, 64, 32, 16)
    mixing_prob: float = 0.9
    w_avg_beta: float = 0.995
    noise: bool = True

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False, labels: jax.Array | None = None,
                 truncation: float | jax.Array = 1.0) -> jax.Array:
        """Images (B, 32, 32, 1), linear. `labels` is ignored (the model is unconditional).
        `train` with mutable `batch_stats` moves w_avg toward the batch mean of w; `train` with
        a "noise" RNG mixes styles. `truncation` psi < 1 pulls every w toward w_avg."""
        del labels
        mapping = MappingNetwork(self.w_dim, self.mapping_layers, self.mapping_lr_mul,
                                 name="mapping")
        w = mapping(z)
        w_avg = self.variable("batch_stats", "w_avg", jnp.zeros, (self.w_dim,))
        if train and self.is_mutable_collection("batch_stats"):
            batch_mean = jax.lax.stop_gradient(w.mean(axis=0))
            w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)
        n = num_ws(self.channels)
        ws = jnp.broadcast_to(w[:, None], (w.shape[0], n, self.w_dim))
        if train and self.mixing_prob > 0 and self.has_rng("noise"):
            ws = self._mix(mapping, ws, z)
        if not (isinstance(truncation, numbers.Number) and truncation == 1):
            ws = w_avg.value + truncation * (ws - w_avg.value)
        self.sow("intermediates", "ws", ws)
        return SynthesisNetwork(self.channels, self.noise, name="synthesis")(ws)

    def _mix(self, mapping: MappingNetwork, ws: jax.Array, z: jax.Array) -> jax.Array:
        """Style mixing (Karras et al. 2019, sec. 3.1): with probability `mixing_prob` per
        sample, the ws from a uniform cutoff in [1, num_ws) on come from a second latent. It is
        drawn N(0, 1): the mapping normalizes z, so only its direction matters."""
        z_key, cutoff_key, mix_key = jax.random.split(self.make_rng("noise"), 3)
        w2 = mapping(jax.random.normal(z_key, z.shape, z.dtype))
        b, n, _ = ws.shape
        cutoff = jax.random.randint(cutoff_key, (b,), 1, n)
        cutoff = jnp.where(jax.random.uniform(mix_key, (b,)) < self.mixing_prob, cutoff, n)
        second = jnp.arange(n)[None, :] >= cutoff[:, None]
        return jnp.where(second[..., None], w2[:, None], ws)


class DiscriminatorBlock(nn.Module):
    """Residual block, halving the resolution (Karras et al. 2020, fig. 7c)."""
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = lrelu(EqualConv(x.shape[-1], 3, name="conv0")(x))
        y = avg_pool2(lrelu(EqualConv(self.features, 3, name="conv1")(y)))
        skip = EqualConv(self.features, 1, use_bias=False, name="skip")(avg_pool2(x))
        return (y + skip) / SQRT2


class Discriminator(nn.Module):
    """Residual D; `channels` per resolution 32, 16, 8, 4."""
    channels: tuple[int, ...] = (16, 32, 64, 64)
    mbstd_group: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = False,
                 labels: jax.Array | None = None) -> jax.Array:
        """One logit per image, (B,). `deterministic` and `labels` are ignored."""
        del deterministic, labels
        size = 4 * 2 ** (len(self.channels) - 1)
        if x.shape[1:3] != (size, size):
            raise ValueError(f"the discriminator takes {size}x{size} images, got {x.shape}")
        x = lrelu(EqualConv(self.channels[0], 1, name=f"b{size}_fromrgb")(x))
        for level, channels in enumerate(self.channels[1:]):
            x = DiscriminatorBlock(channels, name=f"b{size >> level}")(x)
        x = layers.minibatch_std(x, self.mbstd_group)
        x = lrelu(EqualConv(self.channels[-1], 3, name="b4_conv")(x))
        x = lrelu(EqualDense(self.channels[-1], name="b4_fc")(x.reshape(x.shape[0], -1)))
        return EqualDense(1, name="out")(x)[:, 0]


def default_model_config() -> ml_collections.ConfigDict:
    """The `model` sub-config of a StyleGAN2 run, small enough to train on a CPU."""
    c = ml_collections.ConfigDict()
    c.arch = "stylegan"
    c.norm = "none"  # StyleGAN2 has no normalization layers (demodulation replaces them)
    c.w_dim = 128
    c.mapping_layers = 4  # the paper's 8 is for 512-wide ws and 1024px images
    c.mapping_lr_mul = 0.01
    c.g_channels = (64, 64, 32, 16)  # resolutions 4, 8, 16, 32
    c.d_channels = (16, 32, 64, 64)  # resolutions 32, 16, 8, 4
    c.mixing_prob = 0.9
    c.w_avg_beta = 0.995
    c.noise = True
    c.mbstd_group = 4
    return c


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"model.{name}={value!r}: must be a positive integer")
    return int(value)


def _channels(name: str, value, resolutions: tuple[int, ...]) -> tuple[int, ...]:
    ok = isinstance(value, (tuple, list)) and len(value) == len(resolutions) and all(
        isinstance(c, numbers.Integral) and not isinstance(c, bool) and c > 0 for c in value)
    if not ok:
        raise ValueError(f"model.{name}={value!r}: must be {len(resolutions)} positive integers, "
                         f"the channels at resolutions {resolutions}")
    return tuple(int(c) for c in value)


def _in_unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"model.{name}={value!r}: must be a number in [0, 1]")
    return float(value)


def make_models(model: ml_collections.ConfigDict) -> tuple[Generator, Discriminator]:
    """G and D from the `model` sub-config (fields as `default_model_config`); a bad value raises
    ValueError naming the field and what it allows."""
    lr_mul = model.mapping_lr_mul
    if isinstance(lr_mul, bool) or not isinstance(lr_mul, numbers.Real) or not lr_mul > 0:
        raise ValueError(f"model.mapping_lr_mul={lr_mul!r}: must be a positive number")
    if not isinstance(model.noise, bool):
        raise ValueError(f"model.noise={model.noise!r}: must be True or False")
    g = Generator(w_dim=_positive_int("w_dim", model.w_dim),
                  mapping_layers=_positive_int("mapping_layers", model.mapping_layers),
                  mapping_lr_mul=float(lr_mul),
                  channels=_channels("g_channels", model.g_channels, RESOLUTIONS),
                  mixing_prob=_in_unit_interval("mixing_prob", model.mixing_prob),
                  w_avg_beta=_in_unit_interval("w_avg_beta", model.w_avg_beta),
                  noise=model.noise)
    d = Discriminator(channels=_channels("d_channels", model.d_channels, RESOLUTIONS[::-1]),
                      mbstd_group=_positive_int("mbstd_group", model.mbstd_group))
    return g, d
