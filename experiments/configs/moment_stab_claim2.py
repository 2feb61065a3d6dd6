"""Claim 2 of the moment-stabilization study, at the scale a 2-core CPU runs in one session: at
Adam's smallest learning rate, 0.0001, the plain GAN collapses and the moment term rescues it.

Command:
    python experiments/run.py --exp=moment_stab_claim2 \\
        --workdir=$HOME/jaxgen-runs/moment_stab_claim2
    python experiments/report.py --workdir=$HOME/jaxgen-runs/moment_stab_claim2 \\
        --publish=experiments/results/moment_stab_claim2

The study's DCGAN, losses and optimizer on all 55,000 training images; lr 0.0001 with the term
off (0) and on (0.1), seeds 0-4 (each seed's initialization, z stream and data order shared by
its two runs: a paired design); 5 epochs, 2,750 steps per run (25% of the reference's 11,000;
the reference's run with the term drew digits by about epoch 5). Every 275 steps, 2,000 samples
in both batch-norm modes are scored against the 10,000 MNIST test images.

Runtime: 2-core CPU, measured in `experiments/results/moment_stab_claim2/report.md`; about 10
minutes a run at 0.19 s per step. One GPU: not measured (none was lent).
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 5
    c.learning_rates = (0.0001,)
    c.seeds = (0, 1, 2, 3, 4)
    c.eval_every_steps = 275
    c.eval_examples = 1000
    c.eval_samples = 2000
    c.fd_threshold = 50.0  # justified in moment_stab_claims13
    return c
