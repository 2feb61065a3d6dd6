"""The moment-stabilization study's first test: a feed-forward GAN on MNIST, with and without the
moment term, evaluated like the DCGAN study.

Command:
    python experiments/run.py --exp=moment_stab_mnist_mlp --workdir=runs/moment_stab_mnist_mlp

G: Dense 128, LeakyReLU 0.01, Dense 784, tanh. D: Dense 128, LeakyReLU 0.01, Dense 1. Adam
0.002, batch 100, 100 epochs of 550 steps, one-sided label smoothing 0.1 (real label 0.9);
two settings (moment weight 0 and 0.1) x three seeds, evaluated every 5 epochs on 10,000
samples against the 10,000 MNIST test images.

Runtime: 2-core CPU, 1,242 s for the six runs at 30 epochs (measured, sharing the CPU with
another study), so roughly an hour at 100 epochs. One GPU: not measured (none was available).
Expected result (30 epochs, experiments/results/moment_stab_mnist_mlp/): with the term the final
eval/fd is 22.6 +- 4.5 against 56.2 +- 30 without, all ten digits covered, recall 0.22 vs 0.002.
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 100
    c.full_study_steps = 100 * 550
    c.learning_rates = (0.002,)
    c.moment_weights = (0.0, 0.1)
    c.seeds = (0, 1, 2)
    c.eval_every_epochs = 5
    c.log_every_steps = 50
    c.steps_per_dispatch = 50
    c.model.arch = "mlp"
    c.model.g_hidden = 128
    c.model.slope = 0.01
    c.model.bias_init = 0.0
    c.model.norm = "none"  # the feed-forward GAN has no normalization layers
    c.model.d_dropout = 0.0
    with c.unlocked():
        c.model.d_hidden = 128
    return c
