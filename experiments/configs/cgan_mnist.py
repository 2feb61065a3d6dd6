"""Conditional GAN on MNIST: how large should the conditioning input be, how wide the generator,
and which Adam b1? G and D take the digit label (a learned embedding of `model.embed_dim`, or a
one-hot vector), concatenated with z in G and with the image features in D.

Command:
    python experiments/run.py --exp=cgan_mnist --workdir=runs/cgan_mnist

The study: conditioning {one-hot, embedding 4, 16, 64} x G width {32, 64, 128} x Adam b1 {0.5
(Radford et al. 2016), 0.9 (what the source used, calling it momentum)}, 24 variants x 3 seeds =
72 runs, lr 0.0002, batch 100, 20 epochs of 550 steps, evaluated every epoch (jaxgen.evaluator,
10,000 samples against the 10,000 MNIST test images: the unconditional metrics, the classifier's
accuracy on the digit each sample was asked to be, `eval/cond_acc`, and per-digit `eval/fd_<d>`).
The report ranks the variants against the first (one-hot, width 64, b1 0.5) and shows G/D
balance per run.

Runtime: 2-core CPU, 143 ms per step at the baseline (`benchmarks/train_step.py --model=cgan`,
measured while another job shared the CPU), so a run takes about 26 minutes of steps plus 20
evaluations, and the 72 runs about 35 hours; one GPU: not measured (none was available).
`cgan_mnist_cpu` is the published CPU scale.

Expected result: see experiments/results/cgan_mnist_cpu/report.md (the CPU scale); the full
scale is not yet run.
"""

import itertools
import os

from jaxgen.config import load_config
from jaxgen.models import cgan

CONDITIONING = {"onehot": "model.cond=onehot", "emb4": "model.cond=embed,model.embed_dim=4",
                "emb16": "model.cond=embed,model.embed_dim=16",
                "emb64": "model.cond=embed,model.embed_dim=64"}


def variants(conditionings, widths, b1s) -> tuple[str, ...]:
    """One variant per (conditioning, G width, b1), the first of each the baseline's value."""
    return tuple(f"{cond}-w{w}-b{b1:g}:{CONDITIONING[cond]},model.g_width={w},"
                 f"g_optimizer.b1={b1},d_optimizer.b1={b1}"
                 for cond, w, b1 in itertools.product(conditionings, widths, b1s))


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    with c.unlocked():
        c.model = cgan.default_model_config()  # one-hot, width 64, depth 1, concat D
        c.loss.r1_gamma = 0.0  # lazy R1 (off)
        c.loss.r1_every = 16
        c.g_ema_half_life = 0.0  # G's parameter average, half-life in images (off)
        c.g_ema_rampup = 0.0
    c.learning_rates = (0.0002,)
    c.moment_weights = (0.0,)
    c.seeds = (0, 1, 2)
    c.loss.real_label = 1.0  # no label smoothing
    for opt in (c.g_optimizer, c.d_optimizer):
        opt.b1 = 0.5
    c.fd_threshold = 20.0
    c.variants = variants(("onehot", "emb4", "emb16", "emb64"), (64, 32, 128), (0.5, 0.9))
    return c
