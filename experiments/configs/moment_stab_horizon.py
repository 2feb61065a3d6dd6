"""The horizon of claim 2: one 20-epoch run per arm at lr 0.0001. Does the plain GAN stay
collapsed for all 20 epochs, as the reference's did, and when does the term's first draw digits?

Command:
    python experiments/run.py --exp=moment_stab_horizon \\
        --workdir=$HOME/jaxgen-runs/moment_stab_horizon
    python experiments/report.py --workdir=$HOME/jaxgen-runs/moment_stab_horizon \\
        --publish=experiments/results/moment_stab_horizon

The study's DCGAN, losses and optimizer on all 55,000 training images; lr 0.0001, the term off
and on, seed 0 only (so the report gives no verdict: it shows the course of one pair of runs
over the reference's full 11,000 steps); 2,000 samples in both batch-norm modes scored every
550 steps (each epoch).

Runtime: 2-core CPU, about 50 minutes a run at 0.25 s per step; measured in the published
report. One GPU: not measured (none was lent).
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.learning_rates = (0.0001,)
    c.seeds = (0,)
    c.eval_examples = 1000
    c.eval_samples = 2000
    c.fd_threshold = 50.0
    return c
