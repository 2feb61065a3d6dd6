"""The DDPM study at the scale a shared 2-core CPU runs in about an hour: the published jaxgen
answer until a full-scale run replaces it.

Command:
    python experiments/run.py --exp=ddpm_mnist_cpu --workdir=runs/ddpm_mnist_cpu
    python experiments/report.py --workdir=runs/ddpm_mnist_cpu \\
        --publish=experiments/results/ddpm_mnist_cpu

`ddpm_mnist`'s diffusion, optimizer and grid of schedules with a model of 24x fewer parameters
(widths 16-32-32, one block per level, attention at 7x7 only: 280k parameters), batch 32, lr
{2e-4, 1e-3} (the larger one because so few steps are taken) x seeds {0, 1}: 8 runs of 3 epochs
over the first 6,400 training images (600 steps). At the end: bits/dim on the first 200 MNIST test
images, its 999 KL terms estimated from 20 stratified timesteps per image, and the evaluator on
500 DDIM samples (20 steps) against the 10,000 test images. Figures: 50 samples per sampler
(DDPM over 50 timesteps, DDIM over 20) every epoch.

Runtime: 2-core CPU, 313 ms per train step when measured, 211 ms since (2026-12-01;
`benchmarks/train_step.py --model=ddpm_cpu`); the 8
runs took 56 minutes with their evaluations (measured while tests shared the CPU). One GPU: not
measured (none was available).
Expected result (experiments/results/ddpm_mnist_cpu/report.md; the early phase only): lr 0.001
beats 0.0002 at both schedules by a wide margin (eval/fd 51-58 against 90-103, 9 digits covered
against 6.5-7, bits/dim 2.0-2.2 against 2.4-2.6); the cosine schedule has the lower bound at both
rates (by 0.20 and 0.17 bits/dim, clear over 2 seeds) and the lower eval/fd at 0.0002 (clear), not
clearly at 0.001. Half the bound is the decoder term (0.9-1.4 bits/dim), whose floor is set by
the fixed variance of the last step (a DDPM with learned variances lowers it).
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("ddpm_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.model.channels = 16
    c.model.num_res_blocks = 1
    c.model.attention_resolutions = (7,)
    c.model.norm_groups = 8
    c.epochs = 3
    c.batch_size = 32
    c.train_examples = 6400
    c.val_examples = 1000
    c.learning_rates = (2e-4, 1e-3)
    c.optimizer.schedule.warmup_steps = 100
    c.ema_half_life = 5000.0
    c.sampler.ddpm_steps = 50
    c.sampler.ddim_steps = 20
    c.sample_batch = 50
    c.num_fixed_samples = 50
    c.eval_every_epochs = 3
    c.bpd_examples = 200
    c.bpd_terms = 20
    c.eval_samples = 500
    c.fd_threshold = 100.0
    c.log_every_steps = 25
    c.checkpoint_every_steps = 0
    return c
