"""The moment-stabilization study at the scale a 2-core CPU runs in under an hour, with three
seeds and the full evaluation: the published jaxgen answer until a GPU run replaces it.

Command:
    python experiments/run.py --exp=moment_stab_mnist_cpu --workdir=runs/moment_stab_mnist_cpu
    python experiments/report.py --workdir=runs/moment_stab_mnist_cpu \\
        --publish=experiments/results/moment_stab_mnist_cpu

The study's DCGAN, losses, optimizer and six settings, with seeds 0, 1, 2; 3 epochs over the
first 5,000 training images (50 steps each): 150 steps per run, 1.4% of the full study's 11,000.
Every epoch, 2,000 samples (in both batch-norm modes) are scored against the 10,000 MNIST test
images (the protocol uses 10,000 samples; with 2,000 the Fréchet distance is biased upward by a
similar amount in every setting, so settings compare, but the values do not compare with
10,000-sample ones).

Runtime: 2-core CPU, 2,490 s for the 18 runs when measured (the first runs shared the CPU with
another study); 911 s since (2026-12-01, the speed work of `benchmarks/README.md`, runs one after
another by `sweep_mode=auto`); one GPU: not measured (none was available).
Expected result: experiments/results/moment_stab_mnist_cpu/report.md. This scale tests the
study's claims about the early phase of training only.
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 3
    c.train_examples = 5000
    c.seeds = (0, 1, 2)
    c.eval_examples = 1000
    c.eval_samples = 2000
    # At this scale the question is when samples turn from blobs into digits: blobs after 120
    # steps score 110-570, the first digits after 550 steps 68 (the full study uses 20).
    c.fd_threshold = 100.0
    return c
