"""A plain-PyTorch port of the moment-stabilization study's DCGAN train step, to time on CPU
against the JAX step of `benchmarks/train_step.py`.

    python benchmarks/torch_dcgan.py [--steps=20] [--warmup=3] [--batch_size=100] [--compile]

Prints ms per step for each configuration below and the fastest. All run the same model and the
same math (jaxgen/models/dcgan.py, jaxgen/trainers/gan.py `train_step`, lr 1e-3, moment weight
0.1) on random uint8 images, so no data is needed:

    default            NCHW tensors, one no-grad G forward for D's update and one for G's
    channels_last      NHWC memory (the layout XLA uses on CPU)
    reuse_g_forward    one G forward for both updates: D trains on fake.detach(), then G's loss
                       goes through the updated D into the same graph. Identical math, except that
                       G's batch-norm moving averages move once per step instead of twice (the
                       JAX side may use the same trick)
    compile*           torch.compile'd G and losses (forward and backward); opt-in with
                       --compile, as compiling takes minutes; reported unavailable, not fatal,
                       where it fails (no C++ compiler, say)

Padding: TF's SAME pads a stride-2 3x3 convolution of an even input (0, 1) and places its
transposed convolution's output one pixel off from PyTorch's `padding=1, output_padding=1`. This
port uses PyTorch's native paddings (`padding=1`, and `output_padding=1` for the transposed ones):
the same shapes and work, outputs shifted by one pixel, which does not matter for timing.

Not done here, unlike the JAX step: the gradient/update/parameter norms it logs every step.
"""

from __future__ import annotations

import math
import os
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:  # `available()` says so; the classes below need torch
    torch = None
    nn = None

Z_DIM = 100
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
REAL_LABEL, FAKE_LABEL, MOMENT_WEIGHT = 0.9, 0.0, 0.1
BN = dict(momentum=0.01, eps=1e-3)  # TF's batch norm: moving average keeps 0.99 of the old value

# name -> keyword arguments of `time_step`
VARIANTS = {
    "default": {},
    "channels_last": {"channels_last": True},
    "reuse_g_forward": {"reuse_g_forward": True},
    "channels_last+reuse_g_forward": {"channels_last": True, "reuse_g_forward": True},
}
COMPILE_VARIANTS = {
    "compile": {"compiled": True},
    "compile+reuse_g_forward": {"compiled": True, "reuse_g_forward": True},
    "compile+channels_last+reuse_g_forward": {"compiled": True, "channels_last": True,
                                              "reuse_g_forward": True},
}


def available() -> bool:
    return torch is not None


def _init(module) -> None:
    """Glorot-uniform kernels, biases 0.1 (the study's initializers); batch norm keeps 1 and 0."""
    if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
        nn.init.xavier_uniform_(module.weight)
        nn.init.constant_(module.bias, 0.1)


if torch is not None:

    class Generator(nn.Module):
        """z -> Dense 1024 -> BN -> LReLU -> Dense 7*7*256 -> BN -> LReLU -> ConvT 32 -> BN
        -> LReLU -> ConvT 1 -> tanh (28x28). `channels_last` reshapes the dense output as
        (7, 7, 256), as JAX does, which is NHWC memory without a copy."""

        def __init__(self, channels_last: bool = False):
            super().__init__()
            self.channels_last = channels_last
            self.fc1, self.bn1 = nn.Linear(Z_DIM, 1024), nn.BatchNorm1d(1024, **BN)
            self.fc2, self.bn2 = nn.Linear(1024, 7 * 7 * 256), nn.BatchNorm2d(256, **BN)
            self.up1 = nn.ConvTranspose2d(256, 32, 3, stride=2, padding=1, output_padding=1)
            self.bn3 = nn.BatchNorm2d(32, **BN)
            self.up2 = nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1)
            self.apply(_init)

        def forward(self, z):
            x = F.leaky_relu(self.bn1(self.fc1(z)), 0.2)
            x = self.fc2(x)
            if self.channels_last:
                x = x.view(-1, 7, 7, 256).permute(0, 3, 1, 2)
            else:
                x = x.view(-1, 256, 7, 7)
            x = F.leaky_relu(self.bn2(x), 0.2)
            x = F.leaky_relu(self.bn3(self.up1(x)), 0.2)
            return torch.tanh(self.up2(x))

    class Discriminator(nn.Module):
        """x -> Conv 32 -> BN -> LReLU -> Conv 256 -> BN -> LReLU -> flatten -> Dropout 0.5
        -> Dense 1 (logit). Batch norm always uses batch statistics (train mode throughout)."""

        def __init__(self, channels_last: bool = False):
            super().__init__()
            self.channels_last = channels_last
            self.conv1 = nn.Conv2d(1, 32, 3, stride=2, padding=1)
            self.bn1 = nn.BatchNorm2d(32, **BN)
            self.conv2 = nn.Conv2d(32, 256, 3, stride=2, padding=1)
            self.bn2 = nn.BatchNorm2d(256, **BN)
            self.fc = nn.Linear(7 * 7 * 256, 1)
            self.apply(_init)

        def forward(self, x):
            x = F.leaky_relu(self.bn1(self.conv1(x)), 0.2)
            x = F.leaky_relu(self.bn2(self.conv2(x)), 0.2)
            # Flatten in memory order: (h, w, c) as JAX does for NHWC, (c, h, w) for NCHW.
            x = x.permute(0, 2, 3, 1).flatten(1) if self.channels_last else x.flatten(1)
            return self.fc(F.dropout(x, 0.5, training=True))[:, 0]


def param_counts() -> tuple[int, int]:
    """(G, D) trainable parameters, batch-norm scales and offsets included: (13037697, 87425)."""
    return tuple(sum(p.numel() for p in m.parameters()) for m in (Generator(), Discriminator()))


def _bce(logits, target: float):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _adam(module):
    try:  # the fused CPU kernel where this PyTorch has it
        return torch.optim.Adam(module.parameters(), LR, betas=BETAS, eps=EPS, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(module.parameters(), LR, betas=BETAS, eps=EPS, foreach=True)


def make_step(batch_size: int, channels_last: bool = False, reuse_g_forward: bool = False,
              compiled: bool = False):
    """A fresh G, D and their Adams, and `step(real)`: one D update then one G update, `real`
    being a batch of images in [-1, 1], (batch, 1, 28, 28)."""
    g, d = Generator(channels_last), Discriminator(channels_last)
    if channels_last:  # NHWC conv weights too, so that every conv runs (and outputs) NHWC
        g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
    g_opt, d_opt = _adam(g), _adam(d)
    g_params = list(g.parameters())

    def d_loss(real, fake):
        return _bce(d(real), REAL_LABEL) + _bce(d(fake), FAKE_LABEL)

    def g_loss(fake, real):
        moments = ((fake.mean(0) - real.mean(0)).abs().sum()
                   + (fake.var(0, correction=0) - real.var(0, correction=0)).abs().sum())
        return _bce(d(fake), 1.0) + MOMENT_WEIGHT * moments

    generate = g
    if compiled:
        generate, d_loss, g_loss = torch.compile(g), torch.compile(d_loss), torch.compile(g_loss)

    def step(real):
        z = torch.rand(batch_size, Z_DIM) * 2 - 1
        if reuse_g_forward:
            fake = generate(z)
            d_fake = fake.detach()
        else:
            with torch.no_grad():
                d_fake = generate(z)
        d_opt.zero_grad(set_to_none=True)
        loss_d = d_loss(real, d_fake)
        loss_d.backward()
        d_opt.step()

        if not reuse_g_forward:
            fake = generate(z)  # the same z, through G again, as the reference does
        g_opt.zero_grad(set_to_none=True)
        loss_g = g_loss(fake, real)
        loss_g.backward(inputs=g_params)  # no gradients for D's parameters
        g_opt.step()
        return loss_d.detach(), loss_g.detach()

    return step


def set_threads() -> None:
    """Every core for PyTorch's intra-op pool (the JAX step uses them all too). Shared by the
    PyTorch peers (`torch_stylegan.py`, `torch_unet.py`)."""
    if torch.get_num_threads() != os.cpu_count():
        torch.set_num_threads(os.cpu_count())


def step_timer(step, batch_size: int, channels_last: bool = False, pad_to: int = 28, **_):
    """`run(n) -> seconds per step` over n calls of `step` on ten batches of random uint8
    images, (N, 28, 28, 1) as in the JAX benchmark, converted to [-1, 1] per step and padded
    with -1 to `pad_to` pixels a side (the StyleGAN's 32); the calls are counted across runs.
    Shared by the PyTorch peers."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randint(0, 256, (10, batch_size, 28, 28, 1), dtype=torch.uint8)
    pad = (pad_to - 28) // 2
    counter = {"i": 0}

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            real = images[counter["i"] % 10].permute(0, 3, 1, 2).float() / 127.5 - 1
            if pad:
                real = F.pad(real, (pad, pad, pad, pad), value=-1.0)
            step(real.contiguous(memory_format=memory_format))
            counter["i"] += 1
        return (time.perf_counter() - start) / n

    return run


def fastest(variants: dict[str, dict], time_variant, verbose: bool = False
            ) -> tuple[str, float, dict[str, float]]:
    """Times `time_variant(**kwargs)` (seconds per step) for every variant; returns the
    fastest's name, its seconds per step and all results (NaN where a torch.compile variant
    failed). Shared by the PyTorch peers' `best`."""
    results = {}
    for name, kwargs in variants.items():
        start = time.perf_counter()
        try:
            results[name] = time_variant(**kwargs)
        except Exception as e:  # torch.compile can fail in many ways
            if not kwargs.get("compiled"):
                raise
            results[name] = math.nan
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"{name}: unavailable ({type(e).__name__}: {reason})", file=sys.stderr)
        if verbose:
            seconds = results[name]
            ms = "unavailable" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms/step"
            print(f"{name:40s} {ms:>15s}"
                  f"   ({time.perf_counter() - start:.0f} s including warm-up)", flush=True)
    timed = {k: v for k, v in results.items() if not math.isnan(v)}
    name = min(timed, key=timed.get)
    return name, timed[name], results


def time_step(batch_size: int = 100, steps: int = 20, warmup: int = 3, **variant) -> float:
    """Seconds per train step after `warmup` steps; `variant` is one of VARIANTS'/
    COMPILE_VARIANTS' keyword sets (channels_last, reuse_g_forward, compiled)."""
    set_threads()
    torch.manual_seed(0)
    if variant.get("compiled"):
        torch.compiler.reset()
    run = step_timer(make_step(batch_size, **variant), batch_size, **variant)
    run(warmup)
    return run(steps)


def best(batch_size: int = 100, steps: int = 20, warmup: int = 3, include_compile: bool = False,
         verbose: bool = False) -> tuple[str, float, dict[str, float]]:
    """Times every configuration; returns the fastest's name, its seconds per step and all
    results (NaN where torch.compile failed). The torch.compile ones only with
    `include_compile`: compiling them took 2-2.5 minutes on a 2-core CPU (seconds once
    inductor's on-disk cache holds them), and they were never faster than eager there."""
    variants = {**VARIANTS, **(COMPILE_VARIANTS if include_compile else {})}
    return fastest(variants, lambda **kwargs: time_step(batch_size, steps, warmup, **kwargs),
                   verbose)


def main(argv: list[str]) -> None:
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in argv)
    if not available():
        sys.exit("PyTorch is not installed: pip install torch")
    batch_size = int(flags.get("batch_size", 100))
    steps, warmup = int(flags.get("steps", 20)), int(flags.get("warmup", 3))
    g, d = param_counts()
    print(f"torch {torch.__version__} threads={os.cpu_count()} batch_size={batch_size} "
          f"steps={steps} warmup={warmup} G params={g:,} D params={d:,}")
    name, seconds, _ = best(batch_size, steps, warmup, include_compile="compile" in flags,
                            verbose=True)
    print(f"best={name} ms_per_step={seconds * 1e3:.1f} steps_per_s={1 / seconds:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
