"""A small StyleGAN2 on MNIST padded to 32x32, tuned over learning rate and batch size (the source
found 0.001 and 32 best), with mode-collapse diagnostics every epoch.

Command:
    python experiments/run.py --exp=stylegan_mnist --workdir=runs/stylegan_mnist

The model (jaxgen/models/stylegan.py): mapping network, modulated and demodulated convolutions,
per-layer noise, style mixing (probability 0.9), equalized learning rate; the non-saturating loss
with lazy R1 on real images (gamma 0.01, StyleGAN2-ADA's value at 32x32, every 16 steps); Adam
b1 0, b2 0.99 (StyleGAN2's); samples and evaluation from G's moving average (half-life 10,000
images, ramp-up 0.05). z ~ U(-1, 1) as every jaxgen GAN draws it (the mapping network normalizes
it). Samples are cropped back to 28x28 for the evaluator.

The study: lr {0.0002, 0.001, 0.0025} x batch {32, 64} (a variant each; the first is batch 32)
x seeds {0, 1, 2}: 18 runs, 10 epochs of 55,000 images, evaluated every epoch on 10,000 samples
against the 10,000 MNIST test images (`eval/fd`, and coverage, recall and class KL for mode
collapse: an alert is logged, and named in the report, when coverage or recall falls).

Runtime: 2-core CPU, 605 ms per step at batch 32 when measured, 301 ms since (2026-12-01;
`benchmarks/train_step.py --model=stylegan`,
measured while other jobs shared the CPU; XLA's convolution was 2.8x slower in a sweep of 6):
17,000 steps per batch-32 run, about 3 hours; the 18 runs about 2 days. One GPU: not measured
(none was available). `stylegan_mnist_cpu` is the published CPU scale.

Expected result: experiments/results/stylegan_mnist_cpu/report.md (CPU scale); the full scale is
not yet run.
"""

import os

from jaxgen.config import load_config
from jaxgen.models import stylegan


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    with c.unlocked():
        c.model = stylegan.default_model_config()
        c.loss.r1_gamma = 0.01
        c.loss.r1_every = 16
        c.g_ema_half_life = 10000.0
        c.g_ema_rampup = 0.05
    c.epochs = 10
    c.batch_size = 32
    c.full_study_steps = 10 * (55000 // 32)
    c.learning_rates = (0.0002, 0.001, 0.0025)
    c.moment_weights = (0.0,)
    c.seeds = (0, 1, 2)
    c.loss.real_label = 1.0  # the non-saturating loss, no label smoothing
    for opt in (c.g_optimizer, c.d_optimizer):
        opt.b1, opt.b2 = 0.0, 0.99
    c.eval_samples = 9984  # a multiple of the batch sizes (samples are drawn in batches)
    c.eval_examples = 4992
    c.num_fixed_samples = 64
    c.fd_threshold = 20.0
    c.variants = ("b32:batch_size=32", "b64:batch_size=64")
    return c
