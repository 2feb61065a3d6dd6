"""A plain-PyTorch port of the small StyleGAN2's train step (jaxgen/models/stylegan.py,
jaxgen/trainers/gan.py `train_step`, experiments/configs/stylegan_mnist.py), to time on CPU
against the JAX step of `benchmarks/train_step.py --model=stylegan`.

    python benchmarks/torch_stylegan.py [--steps=16] [--warmup=2] [--batch_size=32]

Prints ms per step for each configuration below and the fastest. All run the same model and the
same math on random uint8 images (28x28, scaled to [-1, 1] and padded with -1 to 32x32 as the
trainer does), so no data is needed:

    default                  NCHW tensors; the modulated convolution as the JAX model computes it
                             ("non-fused": scale the input by the styles, convolve with the shared
                             kernel, scale the output by the demodulation coefficients)
    channels_last            the same in NHWC memory (the layout XLA uses on CPU)
    grouped                  the modulated convolution as StyleGAN2's grouped convolution: one
                             modulated, demodulated kernel per sample, the batch folded into the
                             channels, `groups=batch` (Karras et al. 2020, appendix B); the same
                             function of its inputs
    channels_last+grouped    both

The model, as `stylegan.default_model_config()` builds it for stylegan_mnist: z (100) -> mapping
(4 x equalized dense 128, lr x0.01, leaky ReLU x sqrt 2) -> w; w_avg tracked (decay 0.995); 11
ws, style mixing with probability 0.9 (a second latent N(0, 1), a uniform cutoff in [1, 11));
synthesis from a learned 4x4x64 constant, modulated/demodulated 3x3 convolutions with per-pixel
noise (learned strength) and bias at 4, 8, 16, 32 (channels 64, 64, 32, 16; bilinear x2
upsampling, which equals `upsample2`), a modulated 1x1 ToRGB per resolution summed in the skip
architecture; the residual D (channels 16, 32, 64, 64; 2x2 average pooling; 1/sqrt 2), minibatch
stddev (group 4), 3x3 conv, dense 64, dense 1. Parameters are stored as jaxgen stores them (unit
normal times 1/lr_mul, biases at their initial value) and scaled at run time (equalized learning
rate), so Adam sees the same tensors: G 275,163 parameters, D 218,417 (`parameter_counts`),
exactly those of the JAX models as `gan.create_state` initializes them (`jax_parameter_counts`).

The step, as `gan.train_step` does it for this config: z ~ U(-1, 1); G forward once (train mode:
noise, style mixing, the w_avg update); D on the real batch and on the detached fakes, the
sigmoid cross-entropy losses of jaxgen/losses.py (real label 1, fake 0); lazy R1 on every 16th
step (steps 0, 16, 32, ... of this step function's own count, as the JAX step counts
`batch["step"]`): a separate D pass on the real batch, grad of the logits' sum with respect to the
images with `create_graph=True`, `0.5 * gamma * 16 * mean |grad|^2` added to D's loss (gamma
0.01); D backward and Adam; then G's loss, non-saturating plus the moment term (weight 0: the
study's `moment_weights`; it is computed all the same, as the JAX step computes it), through the
updated D, backward into G's saved forward pass; Adam (b1 0, b2 0.99, eps 1e-8, no weight decay
or clipping: the config's) on both; G's parameter EMA (half-life 10,000 images, ramp-up 0.05).
To count R1 at its average cost, time a multiple of 16 steps (`best`'s default: 16 timed steps
hold exactly one R1 step wherever they start).

Not reproduced exactly, all of it invisible in timing or a relabelling of random parameters:
- random numbers: torch's generator, not JAX's (z, noise, mixing, initial parameters), so a
  given seed does not draw the same run;
- kernel layouts: PyTorch's (out, in, kh, kw) and dense (out, in) for jaxgen's (kh, kw, in, out)
  and (in, out); D's last feature map is flattened in jaxgen's (h, w, c) order in every variant;
- the learning rate is 0.001 (the source's best) and the moment weight 0 (the study's) where
  `train_step.py` gives JAX 1e-4 and 0.1: the same work either way;
- not done here, unlike the JAX step: the gradient/update/parameter norms it logs, its
  stability detectors and the guard that would undo a bad step, and the L1/L2 penalty (0 here).
- torch.compile is not offered: the R1 steps need double backward, which its compiled backward
  does not support.
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_dcgan  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # `available()` says so; the classes below need torch
    torch = None
    nn = None

# stylegan_mnist (experiments/configs/stylegan_mnist.py and stylegan.default_model_config()).
Z_DIM, IMAGE_SIZE = 100, 32
W_DIM, MAPPING_LAYERS, MAPPING_LR_MUL = 128, 4, 0.01
G_CHANNELS, D_CHANNELS = (64, 64, 32, 16), (16, 32, 64, 64)
MIXING_PROB, W_AVG_BETA, MBSTD_GROUP = 0.9, 0.995, 4
LR, BETAS, EPS = 1e-3, (0.0, 0.99), 1e-8
REAL_LABEL, FAKE_LABEL, MOMENT_WEIGHT = 1.0, 0.0, 0.0
R1_GAMMA, R1_EVERY = 0.01, 16
G_EMA_HALF_LIFE, G_EMA_RAMPUP = 10000.0, 0.05
SQRT2 = math.sqrt(2.0)

# name -> keyword arguments of `make_step`
VARIANTS = {
    "default": {},
    "channels_last": {"channels_last": True},
    "grouped": {"grouped": True},
    "channels_last+grouped": {"channels_last": True, "grouped": True},
}


def available() -> bool:
    return torch is not None


def lrelu(x):
    """Leaky ReLU 0.2 times sqrt 2 (stylegan.lrelu)."""
    return F.leaky_relu(x, 0.2) * SQRT2


def upsample2(x):
    """x2 bilinear, half-pixel centres, edges clamped: stylegan.upsample2 exactly."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def modulated_conv(x, weight, styles, demodulate: bool = True, grouped: bool = False,
                   eps: float = 1e-8):
    """stylegan.modulated_conv for NCHW `x` (B, I, H, W), `weight` (O, I, k, k) (already scaled),
    `styles` (B, I); SAME padding. `grouped`: per-sample kernels and one grouped convolution;
    otherwise the input scaled, one shared convolution, the output demodulated."""
    pad = weight.shape[-1] // 2
    if grouped:
        b, c, h, w = x.shape
        o, k = weight.shape[0], weight.shape[-1]
        kernels = weight[None] * styles[:, None, :, None, None]  # (B, O, I, k, k)
        if demodulate:
            kernels = kernels * torch.rsqrt(kernels.square().sum((2, 3, 4), keepdim=True) + eps)
        y = F.conv2d(x.reshape(1, b * c, h, w), kernels.reshape(b * o, c, k, k), padding=pad,
                     groups=b)
        return y.reshape(b, o, h, w)
    y = F.conv2d(x * styles[:, :, None, None], weight, padding=pad)
    if demodulate:
        demod = torch.rsqrt(styles.square() @ weight.square().sum((2, 3)).t() + eps)
        y = y * demod[:, :, None, None]
    return y


if torch is not None:

    class EqualLinear(nn.Module):
        """stylegan.EqualDense: weight N(0, 1/lr_mul^2) used times lr_mul/sqrt(fan_in); bias
        stored as `bias_init`, used times lr_mul."""

        def __init__(self, fan_in: int, features: int, lr_mul: float = 1.0,
                     bias_init: float = 0.0):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(features, fan_in) / lr_mul)
            self.bias = nn.Parameter(torch.full((features,), float(bias_init)))
            self.scale, self.lr_mul = lr_mul / math.sqrt(fan_in), lr_mul

        def forward(self, x):
            return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    class EqualConv2d(nn.Module):
        """stylegan.EqualConv: SAME k x k convolution, equalized learning rate."""

        def __init__(self, in_channels: int, features: int, kernel_size: int = 3,
                     bias: bool = True):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(features, in_channels, kernel_size,
                                                   kernel_size))
            self.bias = nn.Parameter(torch.zeros(features)) if bias else None
            self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)

        def forward(self, x):
            return F.conv2d(x, self.weight * self.scale, self.bias,
                            padding=self.weight.shape[-1] // 2)

    class MappingNetwork(nn.Module):
        """z -> w: z normalized to unit second moment, then `num_layers` EqualLinear + lrelu."""

        def __init__(self, z_dim: int = Z_DIM, w_dim: int = W_DIM,
                     num_layers: int = MAPPING_LAYERS, lr_mul: float = MAPPING_LR_MUL):
            super().__init__()
            self.fcs = nn.ModuleList(EqualLinear(z_dim if i == 0 else w_dim, w_dim, lr_mul)
                                     for i in range(num_layers))

        def forward(self, z):
            x = z * torch.rsqrt(z.square().mean(-1, keepdim=True) + 1e-8)
            for fc in self.fcs:
                x = lrelu(fc(x))
            return x

    class StyledConv(nn.Module):
        """Modulated 3x3 convolution (after x2 upsampling if `up`), noise, bias, lrelu."""

        def __init__(self, w_dim: int, in_channels: int, features: int, up: bool = False,
                     noise: bool = True, grouped: bool = False):
            super().__init__()
            self.up, self.grouped = up, grouped
            self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
            self.weight = nn.Parameter(torch.randn(features, in_channels, 3, 3))
            self.noise_strength = nn.Parameter(torch.zeros(())) if noise else None
            self.bias = nn.Parameter(torch.zeros(features))
            self.scale = 1 / math.sqrt(9 * in_channels)

        def forward(self, x, w, noise: bool):
            if self.up:
                x = upsample2(x)
            x = modulated_conv(x, self.weight * self.scale, self.affine(w), grouped=self.grouped)
            if noise and self.noise_strength is not None:
                b, _, h, w_ = x.shape
                x = x + self.noise_strength * torch.randn(b, 1, h, w_)
            return lrelu(x + self.bias[:, None, None])

    class ToRGB(nn.Module):
        """Modulated 1x1 convolution to one channel, without demodulation, plus bias."""

        def __init__(self, w_dim: int, in_channels: int, grouped: bool = False):
            super().__init__()
            self.grouped = grouped
            self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
            self.weight = nn.Parameter(torch.randn(1, in_channels, 1, 1))
            self.bias = nn.Parameter(torch.zeros(1))
            self.scale = 1 / math.sqrt(in_channels)

        def forward(self, x, w):
            x = modulated_conv(x, self.weight * self.scale, self.affine(w), demodulate=False,
                               grouped=self.grouped)
            return x + self.bias[:, None, None]

    class Generator(nn.Module):
        """stylegan.Generator: mapping, w_avg, style mixing, synthesis (skip architecture),
        (B, 1, 32, 32) linear output. `train`: noise, style mixing and the w_avg update, as
        the JAX G with a "noise" rng and mutable batch_stats; else deterministic."""

        def __init__(self, z_dim: int = Z_DIM, w_dim: int = W_DIM,
                     mapping_layers: int = MAPPING_LAYERS, channels=G_CHANNELS,
                     mixing_prob: float = MIXING_PROB, w_avg_beta: float = W_AVG_BETA,
                     noise: bool = True, grouped: bool = False, channels_last: bool = False):
            super().__init__()
            self.mixing_prob, self.w_avg_beta = mixing_prob, w_avg_beta
            self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
            self.register_buffer("w_avg", torch.zeros(w_dim))
            self.const = nn.Parameter(torch.randn(channels[0], 4, 4))
            self.convs, self.torgbs = nn.ModuleList(), nn.ModuleList()
            previous = channels[0]
            for level, c in enumerate(channels):
                if level > 0:
                    self.convs.append(StyledConv(w_dim, previous, c, up=True, noise=noise,
                                                 grouped=grouped))
                self.convs.append(StyledConv(w_dim, c, c, noise=noise, grouped=grouped))
                self.torgbs.append(ToRGB(w_dim, c, grouped=grouped))
                previous = c
            self.levels = len(channels)
            self.num_ws = 3 * len(channels) - 1

        def forward(self, z, train: bool = True):
            w = self.mapping(z)
            b, n = z.shape[0], self.num_ws
            if train:
                with torch.no_grad():
                    mean = w.mean(0)
                    self.w_avg.copy_(mean + self.w_avg_beta * (self.w_avg - mean))
            ws = w[:, None].expand(b, n, w.shape[1])
            if train and self.mixing_prob > 0:
                w2 = self.mapping(torch.randn_like(z))
                cutoff = torch.randint(1, n, (b,))
                cutoff = torch.where(torch.rand(b) < self.mixing_prob, cutoff, n)
                second = torch.arange(n)[None, :] >= cutoff[:, None]
                ws = torch.where(second[..., None], w2[:, None], ws)
            x = self.const[None].expand(b, -1, -1, -1).contiguous(
                memory_format=self.memory_format)
            convs, k, image = iter(self.convs), 0, None
            for level in range(self.levels):
                for _ in range(2 if level else 1):
                    x = next(convs)(x, ws[:, k], noise=train)
                    k += 1
                rgb = self.torgbs[level](x, ws[:, k])
                k += 1
                image = rgb if image is None else upsample2(image) + rgb
            return image

    class DiscriminatorBlock(nn.Module):
        """Residual block halving the resolution (stylegan.DiscriminatorBlock)."""

        def __init__(self, in_channels: int, features: int):
            super().__init__()
            self.conv0 = EqualConv2d(in_channels, in_channels, 3)
            self.conv1 = EqualConv2d(in_channels, features, 3)
            self.skip = EqualConv2d(in_channels, features, 1, bias=False)

        def forward(self, x):
            y = lrelu(self.conv0(x))
            y = F.avg_pool2d(lrelu(self.conv1(y)), 2)
            return (y + self.skip(F.avg_pool2d(x, 2))) / SQRT2

    def minibatch_std(x, group_size: int, eps: float = 1e-8):
        """stylegan.minibatch_std for NCHW: groups are samples i, i + B/G, ..."""
        b, c, h, w = x.shape
        g = min(group_size, b)
        if b % g:
            g = b
        std = torch.sqrt(x.reshape(g, b // g, c, h, w).var(0, correction=0) + eps).mean((1, 2, 3))
        feature = std.repeat(g)[:, None, None, None].expand(b, 1, h, w)
        return torch.cat([x, feature], 1)

    class Discriminator(nn.Module):
        """stylegan.Discriminator: one logit per (B, 1, 32, 32) image."""

        def __init__(self, channels=D_CHANNELS, mbstd_group: int = MBSTD_GROUP):
            super().__init__()
            self.mbstd_group = mbstd_group
            self.fromrgb = EqualConv2d(1, channels[0], 1)
            self.blocks = nn.ModuleList(DiscriminatorBlock(a, b)
                                        for a, b in zip(channels[:-1], channels[1:]))
            self.conv = EqualConv2d(channels[-1] + 1, channels[-1], 3)
            self.fc = EqualLinear(channels[-1] * 16, channels[-1])
            self.out = EqualLinear(channels[-1], 1)

        def forward(self, x):
            x = lrelu(self.fromrgb(x))
            for block in self.blocks:
                x = block(x)
            x = lrelu(self.conv(minibatch_std(x, self.mbstd_group)))
            x = x.permute(0, 2, 3, 1).flatten(1)  # jaxgen's (h, w, c) order
            return self.out(lrelu(self.fc(x)))[:, 0]


def parameter_counts() -> tuple[int, int]:
    """(G, D) trainable parameters: (275163, 218417), those of `jax_parameter_counts()`."""
    return tuple(sum(p.numel() for p in m.parameters()) for m in (Generator(), Discriminator()))


param_counts = parameter_counts  # torch_dcgan's name


def jax_parameter_counts() -> tuple[int, int]:
    """(G, D) parameters of jaxgen's models for stylegan_mnist, initialized as
    `gan.create_state` does and counted by `layers.count_params` (imports jax)."""
    import jax
    import jax.numpy as jnp

    from jaxgen import config as config_lib
    from jaxgen.models import layers
    from jaxgen.trainers import gan

    configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                           "configs")
    config = config_lib.load_config("stylegan_mnist", configs)
    g_model, d_model = gan.make_models(config)
    size = gan.image_size(config)
    g_key, d_key, drop_key = jax.random.split(jax.random.split(jax.random.PRNGKey(0))[0], 3)
    g_vars = g_model.init(g_key, jnp.zeros((2, config.z_dim)), train=False)
    d_vars = d_model.init({"params": d_key, "dropout": drop_key}, jnp.zeros((2, size, size, 1)))
    return layers.count_params(g_vars["params"]), layers.count_params(d_vars["params"])


def _bce(logits, target: float):
    """losses.sigmoid_ce: mean sigmoid cross-entropy against a constant target."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _moments(fake, real):
    """losses.moment_gaps summed: per-pixel |mean gap| + |population variance gap|."""
    return ((fake.mean(0) - real.mean(0)).abs().sum()
            + (fake.var(0, correction=0) - real.var(0, correction=0)).abs().sum())


def _adam(module):
    try:  # the fused CPU kernel where this PyTorch has it
        return torch.optim.Adam(module.parameters(), LR, betas=BETAS, eps=EPS, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(module.parameters(), LR, betas=BETAS, eps=EPS, foreach=True)


def _ema_decay(batch_size: int, images_seen: int) -> float:
    """optim.ema_decay: the half-life at most `rampup` times the images seen."""
    half_life = min(G_EMA_HALF_LIFE, G_EMA_RAMPUP * images_seen) if G_EMA_RAMPUP > 0 \
        else G_EMA_HALF_LIFE
    return 0.5 ** (batch_size / max(half_life, 1e-8))


def make_step(batch_size: int = 32, channels_last: bool = False, grouped: bool = False):
    """A fresh G, D, their Adams and G's average, and `step(real)`: one D update (R1 on every
    R1_EVERY-th call, the first included) then one G update through the updated D, reusing G's
    forward; `real` is a batch of images in [-1, 1], (batch, 1, 32, 32)."""
    g = Generator(grouped=grouped, channels_last=channels_last)
    d = Discriminator()
    if channels_last:  # NHWC conv weights too, so that every conv runs (and outputs) NHWC
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    g_opt, d_opt = _adam(g), _adam(d)
    g_params, d_params = list(g.parameters()), list(d.parameters())
    g_ema = [p.detach().clone() for p in g_params]
    count = {"step": 0}

    def step(real):
        i = count["step"]
        z = torch.rand(batch_size, Z_DIM) * 2 - 1
        fake = g(z, train=True)

        d_opt.zero_grad(set_to_none=True)
        loss_d = _bce(d(real), REAL_LABEL) + _bce(d(fake.detach()), FAKE_LABEL)
        loss = loss_d
        if R1_GAMMA and i % R1_EVERY == 0:  # lazy R1, its own D pass as in the JAX step
            x = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
            r1 = grad.square().flatten(1).sum(1).mean()
            loss = loss + 0.5 * R1_GAMMA * R1_EVERY * r1
        loss.backward(inputs=d_params)
        d_opt.step()

        g_opt.zero_grad(set_to_none=True)
        loss_g = _bce(d(fake), 1.0) + MOMENT_WEIGHT * _moments(fake, real)
        loss_g.backward(inputs=g_params)  # no gradients for D's parameters
        g_opt.step()
        if G_EMA_HALF_LIFE:
            decay = _ema_decay(batch_size, (i + 1) * batch_size)
            with torch.no_grad():
                torch._foreach_lerp_(g_ema, g_params, 1 - decay)
        count["step"] += 1
        return loss_d.detach(), loss_g.detach()

    step.g, step.d, step.g_ema = g, d, g_ema  # for inspection
    return step


def step_timer(step, batch_size: int, channels_last: bool = False, **_):
    """`torch_dcgan.step_timer` on images padded with -1 to 32x32, as the trainer pads them
    (the calls are counted across runs; the step counts its own, for R1)."""
    return torch_dcgan.step_timer(step, batch_size, channels_last, pad_to=IMAGE_SIZE)


def time_step(batch_size: int = 32, steps: int = R1_EVERY, warmup: int = 2, **variant) -> float:
    """Seconds per train step after `warmup` steps; `variant` is one of VARIANTS' keyword sets
    (channels_last, grouped). A multiple of R1_EVERY `steps` counts R1 at its average cost."""
    torch_dcgan.set_threads()
    torch.manual_seed(0)
    run = step_timer(make_step(batch_size, **variant), batch_size, **variant)
    run(warmup)
    return run(steps)


def best(batch_size: int = 32, steps: int = R1_EVERY, warmup: int = 2,
         verbose: bool = False) -> tuple[str, float, dict[str, float]]:
    """Times every configuration of VARIANTS; returns the fastest's name, its seconds per step
    and all results."""
    return torch_dcgan.fastest(
        VARIANTS, lambda **kwargs: time_step(batch_size, steps, warmup, **kwargs), verbose)


def main(argv: list[str]) -> None:
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in argv)
    if not available():
        sys.exit("PyTorch is not installed: pip install torch")
    batch_size = int(flags.get("batch_size", 32))
    steps, warmup = int(flags.get("steps", R1_EVERY)), int(flags.get("warmup", 2))
    g, d = parameter_counts()
    print(f"torch {torch.__version__} threads={os.cpu_count()} batch_size={batch_size} "
          f"steps={steps} warmup={warmup} r1_every={R1_EVERY} G params={g:,} D params={d:,}")
    name, seconds, _ = best(batch_size, steps, warmup, verbose=True)
    print(f"best={name} ms_per_step={seconds * 1e3:.1f} steps_per_s={1 / seconds:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
