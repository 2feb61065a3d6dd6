"""A plain-PyTorch port of the DDPM study's train step, to time on CPU against the JAX step of
`benchmarks/train_step.py --model=ddpm_cpu` (or `--model=ddpm`).

    python benchmarks/torch_unet.py [--scale=ddpm_cpu] [--steps=20] [--warmup=3] [--batch_size=N]

Prints ms per step for each configuration below and the fastest. All run the same model and the
same math (jaxgen/models/unet.py's UNet, jaxgen/diffusion.py's `loss` with the linear schedule,
jaxgen/trainers/diffusion.py `train_step`'s optimizer and parameter average) on random uint8
images, so no data is needed. Two scales, with their configs' values written out in `SCALES`:

    ddpm_cpu   experiments/configs/ddpm_mnist_cpu.py: widths 16-32-32, one block per level,
               attention at 7x7, batch 32 (280,177 parameters)
    ddpm       experiments/configs/ddpm_mnist.py: widths 64-128-128, two blocks per level,
               attention at 14x14 and 7x7, batch 128 (6,801,409 parameters)

Configurations:

    default              NCHW tensors, attention as two explicit batched matrix products and a
                         softmax (as the JAX model writes it)
    channels_last        NHWC memory (the layout XLA uses on CPU); the attention's reshapes to
                         (pixels, channels) are then views
    sdpa                 torch.nn.functional.scaled_dot_product_attention for the attention
    channels_last+sdpa   both

The step: t uniform over 0..T-1 and Gaussian noise per image, x_t = q_sample (T = 1000, the
linear schedule), the epsilon-MSE averaged over pixels and the batch, backward, the global
gradient norm clipped at 1 (optax's `clip_by_global_norm`: no epsilon), Adam (0.9, 0.999, 1e-8)
at lr 2e-4 (the lr `benchmarks/train_step.py` times the JAX step at) times the config's linear
warmup (0 at the first update, as optax's count starts at 0), then the parameters' moving
average with `jaxgen.optim.ema_decay`'s decay (half-life in images, ramp-up 0.1). Layers match
the JAX model's: flax's GroupNorm epsilon (1e-6), its LeCun-normal kernels and zero biases, the
zero-initialized last convolutions, TF's SAME padding of the stride-2 convolutions (the odd pixel
after, so the same pixels are sampled) and nearest upsampling with half-pixel centres
(`jax.image.resize`'s, "nearest-exact" here).

Not done here, unlike the JAX step: the update and parameter norms it logs every step, the
bad-step guard (a finiteness test and a select between the old and the new state) and the spike
detectors' running statistics. The random streams (t, noise, dropout) are PyTorch's, not JAX's.
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

# The two scales: the `model.*` fields, batch size, warmup and EMA half-life of their configs.
SCALES = {
    # experiments/configs/ddpm_mnist.py (`unet.default_model_config()` and its optimizer/EMA)
    "ddpm": dict(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                 attention_resolutions=(14, 7), dropout=0.1, norm_groups=16, batch_size=128,
                 warmup_steps=1000, ema_half_life=500_000.0),
    # experiments/configs/ddpm_mnist_cpu.py (ddpm_mnist with these fields changed)
    "ddpm_cpu": dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                     attention_resolutions=(7,), dropout=0.1, norm_groups=8, batch_size=32,
                     warmup_steps=100, ema_half_life=5000.0),
}
MODEL_FIELDS = ("channels", "channel_mult", "num_res_blocks", "attention_resolutions", "dropout",
                "norm_groups")
# Shared by both configs: T, Adam (optim.default_config("adam")), clip_norm, ema_rampup.
TIMESTEPS = 1000
BETAS, EPS, CLIP_NORM = (0.9, 0.999), 1e-8, 1.0
EMA_RAMPUP = 0.1
LR = 2e-4  # benchmarks/train_step.py `diffusion_timer`'s learning rate
GN_EPS = 1e-6  # flax.linen.GroupNorm's epsilon
SIDE = 28  # MNIST, (N, 1, 28, 28)

# name -> keyword arguments of `time_step`
VARIANTS = {
    "default": {},
    "channels_last": {"channels_last": True},
    "sdpa": {"sdpa": True},
    "channels_last+sdpa": {"channels_last": True, "sdpa": True},
}


def available() -> bool:
    return torch is not None


def _lecun_normal(weight, zero: bool = False) -> None:
    """flax's default kernel initializer: a normal truncated at two standard deviations with
    variance 1 / fan_in (fan_in: input channels times the kernel's taps); zeros where `zero`."""
    if zero:
        nn.init.zeros_(weight)
        return
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # the truncation's lost variance
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's SAME padding (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding of timesteps t (N,) -> (N, dim): cosines then sines of t at
    geometrically spaced frequencies from 1 to 1/max_period (`unet.timestep_embedding`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


if torch is not None:

    def _conv(cin: int, cout: int, kernel: int, zero: bool = False, stride: int = 1,
              padding: int | None = None):
        conv = nn.Conv2d(cin, cout, kernel, stride,
                         padding=kernel // 2 if padding is None else padding)
        _lecun_normal(conv.weight, zero)
        nn.init.zeros_(conv.bias)
        return conv

    def _dense(cin: int, cout: int, zero: bool = False):
        dense = nn.Linear(cin, cout)
        _lecun_normal(dense.weight, zero)
        nn.init.zeros_(dense.bias)
        return dense

    class ResBlock(nn.Module):
        """GroupNorm -> Swish -> 3x3 conv -> + Dense(Swish(temb)) -> GroupNorm -> Swish ->
        dropout -> 3x3 conv (zero-initialized), plus a 1x1 conv on the skip when the width
        changes."""

        def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, groups: int):
            super().__init__()
            self.norm1 = nn.GroupNorm(groups, cin, eps=GN_EPS)
            self.conv1 = _conv(cin, cout, 3)
            self.temb = _dense(temb_dim, cout)
            self.norm2 = nn.GroupNorm(groups, cout, eps=GN_EPS)
            self.dropout = nn.Dropout(dropout)
            self.conv2 = _conv(cout, cout, 3, zero=True)
            self.skip = _conv(cin, cout, 1) if cin != cout else None

        def forward(self, x, temb):
            h = self.conv1(F.silu(self.norm1(x)))
            h = h + self.temb(F.silu(temb))[:, :, None, None]
            h = self.conv2(self.dropout(F.silu(self.norm2(h))))
            return (x if self.skip is None else self.skip(x)) + h

    class Attention(nn.Module):
        """Single-head self-attention over the pixels, residual: GroupNorm, one Dense to q, k, v,
        softmax(q k^T / sqrt(c)) v, a zero-initialized Dense."""

        def __init__(self, channels: int, groups: int, channels_last: bool, sdpa: bool):
            super().__init__()
            self.channels_last, self.sdpa = channels_last, sdpa
            self.norm = nn.GroupNorm(groups, channels, eps=GN_EPS)
            self.qkv = _dense(channels, 3 * channels)
            self.out = _dense(channels, channels, zero=True)

        def forward(self, x):
            n, c, hgt, wid = x.shape
            # (n, pixels, c): a view of NHWC memory, a copy of NCHW.
            h = self.norm(x).permute(0, 2, 3, 1).reshape(n, hgt * wid, c)
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            if self.sdpa:
                a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
            else:
                weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(c), dim=-1)
                a = torch.bmm(weights, v)
            out = self.out(a)
            if self.channels_last:  # back to (n, c, h, w) in NHWC memory, a view
                out = out.reshape(n, hgt, wid, c).permute(0, 3, 1, 2)
            else:
                out = out.transpose(1, 2).reshape(n, c, hgt, wid)
            return x + out

    class Downsample(nn.Module):
        """3x3 stride-2 conv with TF's SAME padding (28 -> 14 pads (0, 1), as XLA does)."""

        def __init__(self, channels: int, side: int):
            super().__init__()
            self.pad = _same_padding(side, 3, 2)
            symmetric = self.pad[0] == self.pad[1]
            self.conv = _conv(channels, channels, 3, stride=2,
                              padding=self.pad[0] if symmetric else 0)
            self.explicit = not symmetric

        def forward(self, x):
            if self.explicit:
                x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
            return self.conv(x)

    class UNet(nn.Module):
        """x_t (N, 1, 28, 28), t (N,) -> predicted noise (N, 1, 28, 28); module for module
        jaxgen/models/unet.py's UNet, the same parameters in the same shapes (transposed)."""

        def __init__(self, channels: int, channel_mult: tuple[int, ...], num_res_blocks: int,
                     attention_resolutions: tuple[int, ...], dropout: float, norm_groups: int,
                     channels_last: bool = False, sdpa: bool = False):
            super().__init__()
            temb_dim = 4 * channels
            self.channels = channels
            self.temb1, self.temb2 = _dense(channels, temb_dim), _dense(temb_dim, temb_dim)
            block = lambda cin, cout: ResBlock(cin, cout, temb_dim, dropout, norm_groups)
            attention = lambda ch: Attention(ch, norm_groups, channels_last, sdpa)

            self.conv_in = _conv(1, channels, 3)
            ch, side = channels, SIDE
            skips = [(ch, side)]  # (width, side) of each skip connection
            self.down = nn.ModuleList()  # per level: [(block, attention or None)...], downsample
            for level, mult in enumerate(channel_mult):
                pairs = nn.ModuleList()
                for _ in range(num_res_blocks):
                    res = block(ch, channels * mult)
                    ch = channels * mult
                    att = attention(ch) if side in attention_resolutions else nn.Identity()
                    pairs.append(nn.ModuleList([res, att]))
                    skips.append((ch, side))
                down = nn.Identity()
                if level < len(channel_mult) - 1:
                    down = Downsample(ch, side)
                    side = -(-side // 2)
                    skips.append((ch, side))
                self.down.append(nn.ModuleList([pairs, down]))

            self.mid1, self.mid_attn = block(ch, ch), attention(ch)
            self.mid2 = block(ch, ch)

            self.up = nn.ModuleList()  # per level: [(block, attention)...], (upsample conv)
            self.up_sizes = []  # the side each upsampling goes to (None: the last level)
            for level, mult in reversed(list(enumerate(channel_mult))):
                pairs = nn.ModuleList()
                for _ in range(num_res_blocks + 1):
                    skip_ch, _ = skips.pop()
                    res = block(ch + skip_ch, channels * mult)
                    ch = channels * mult
                    att = attention(ch) if side in attention_resolutions else nn.Identity()
                    pairs.append(nn.ModuleList([res, att]))
                up = nn.Identity()
                size = None
                if level:
                    size = skips[-1][1]  # 7 -> 14 -> 28
                    up = _conv(ch, ch, 3)
                    side = size
                self.up.append(nn.ModuleList([pairs, up]))
                self.up_sizes.append(size)

            self.norm_out = nn.GroupNorm(norm_groups, ch, eps=GN_EPS)
            self.conv_out = _conv(ch, 1, 3, zero=True)

        def forward(self, x, t):
            temb = timestep_embedding(t, self.channels)
            temb = self.temb2(F.silu(self.temb1(temb)))

            h = self.conv_in(x)
            skips = [h]
            for pairs, down in self.down:
                for res, att in pairs:
                    h = att(res(h, temb))
                    skips.append(h)
                if not isinstance(down, nn.Identity):
                    h = down(h)
                    skips.append(h)

            h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)

            for (pairs, up), size in zip(self.up, self.up_sizes, strict=True):
                for res, att in pairs:
                    h = att(res(torch.cat([h, skips.pop()], dim=1), temb))
                if size is not None:
                    h = up(F.interpolate(h, size=(size, size), mode="nearest-exact"))

            return self.conv_out(F.silu(self.norm_out(h)))


def _scale(scale: str) -> dict:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {tuple(SCALES)}")
    return SCALES[scale]


def make_model(scale: str, channels_last: bool = False, sdpa: bool = False) -> UNet:
    """The UNet of a scale ("ddpm": ddpm_mnist's config, "ddpm_cpu": ddpm_mnist_cpu's), in
    training mode (dropout on)."""
    cfg = _scale(scale)
    model = UNet(**{k: cfg[k] for k in MODEL_FIELDS}, channels_last=channels_last, sdpa=sdpa)
    if channels_last:  # NHWC conv weights too, so that every conv runs (and outputs) NHWC
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def parameter_count(scale: str) -> int:
    """Trainable parameters, GroupNorm scales and offsets included; the JAX model's
    `layers.count_params` of the same config: 6,801,409 ("ddpm") and 280,177 ("ddpm_cpu")."""
    return sum(p.numel() for p in make_model(scale).parameters())


def linear_alpha_bar(timesteps: int = TIMESTEPS):
    """alpha_bar of `diffusion.make_schedule("linear", T)` (float64, then float32)."""
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def ema_decay(half_life: float, batch_size: int, images_seen: float, rampup: float) -> float:
    """`jaxgen.optim.ema_decay`: the half-life at most `rampup` times the images seen so far."""
    if rampup > 0:
        half_life = min(half_life, rampup * images_seen)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


def _adam(params):
    try:  # the fused CPU kernel where this PyTorch has it
        return torch.optim.Adam(params, LR, betas=BETAS, eps=EPS, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, LR, betas=BETAS, eps=EPS, foreach=True)


def make_step(scale: str, batch_size: int | None = None, channels_last: bool = False,
              sdpa: bool = False):
    """A fresh UNet, its Adam and parameter average, and `step(x0) -> loss`: one update on the
    simple objective, `x0` a batch of images in [-1, 1], (batch, 1, 28, 28). `step.model`,
    `step.optimizer` and `step.ema` (the average, a list in `model.parameters()`' order) are
    there to inspect."""
    cfg = _scale(scale)
    batch_size = batch_size or cfg["batch_size"]
    model = make_model(scale, channels_last, sdpa)
    params = list(model.parameters())
    opt = _adam(params)
    ema = [p.detach().clone() for p in params]
    alpha_bar = linear_alpha_bar()
    counter = {"step": 0}

    def step(x0):
        t = torch.randint(0, TIMESTEPS, (batch_size,))
        noise = torch.randn_like(x0)
        ab = alpha_bar[t][:, None, None, None]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise

        opt.zero_grad(set_to_none=True)
        loss = (noise - model(x_t, t)).square().mean()
        loss.backward()

        # optax.clip_by_global_norm: g if |g| < clip, else g / |g| * clip (no epsilon).
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        torch._foreach_mul_(grads, (CLIP_NORM / norm).clamp(max=1.0))
        # lr * linear warmup at optax's count of earlier updates (0 at the first).
        n = counter["step"]
        opt.param_groups[0]["lr"] = LR * min(n / cfg["warmup_steps"], 1.0)
        opt.step()

        decay = ema_decay(cfg["ema_half_life"], batch_size, (n + 1) * batch_size, EMA_RAMPUP)
        with torch.no_grad():  # decay * average + (1 - decay) * params
            torch._foreach_lerp_(ema, params, 1.0 - decay)
        counter["step"] = n + 1
        return loss.detach()

    step.model, step.optimizer, step.ema = model, opt, ema  # for inspection
    return step


def step_timer(step, batch_size: int, channels_last: bool = False, **_):
    """`torch_dcgan.step_timer`: ten batches of random uint8 MNIST-sized images."""
    return torch_dcgan.step_timer(step, batch_size, channels_last)


def time_step(scale: str = "ddpm_cpu", batch_size: int | None = None, steps: int = 20,
              warmup: int = 3, **variant) -> float:
    """Seconds per train step after `warmup` steps; `variant` is one of VARIANTS' keyword sets
    (channels_last, sdpa); `batch_size` None takes the scale's config's."""
    torch_dcgan.set_threads()
    torch.manual_seed(0)
    batch_size = batch_size or _scale(scale)["batch_size"]
    run = step_timer(make_step(scale, batch_size, **variant), batch_size, **variant)
    run(warmup)
    return run(steps)


def best(scale: str = "ddpm_cpu", batch_size: int | None = None, steps: int = 20,
         warmup: int = 3, verbose: bool = False) -> tuple[str, float, dict[str, float]]:
    """Times every configuration; returns the fastest's name, its seconds per step and all
    results."""
    return torch_dcgan.fastest(
        VARIANTS, lambda **kwargs: time_step(scale, batch_size, steps, warmup, **kwargs), verbose)


def main(argv: list[str]) -> None:
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in argv)
    if not available():
        sys.exit("PyTorch is not installed: pip install torch")
    scale = flags.get("scale", "ddpm_cpu")
    if scale not in SCALES:
        sys.exit(f"Unknown --scale={scale}. Fix: choose one of {', '.join(SCALES)}.")
    batch_size = int(flags.get("batch_size", SCALES[scale]["batch_size"]))
    steps, warmup = int(flags.get("steps", 20)), int(flags.get("warmup", 3))
    print(f"torch {torch.__version__} threads={os.cpu_count()} scale={scale} "
          f"batch_size={batch_size} steps={steps} warmup={warmup} "
          f"params={parameter_count(scale):,}")
    name, seconds, _ = best(scale, batch_size, steps, warmup, verbose=True)
    print(f"best={name} ms_per_step={seconds * 1e3:.1f} steps_per_s={1 / seconds:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
