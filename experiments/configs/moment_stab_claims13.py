"""Claims 1 and 3 of the moment-stabilization study, at the scale a 2-core CPU runs in about two
sessions: the term speeds training at lr 0.01 and 0.001, and its effect is smallest at 0.001.

Command:
    python experiments/run.py --exp=moment_stab_claims13 \\
        --workdir=$HOME/jaxgen-runs/moment_stab_claims13
    python experiments/report.py --workdir=$HOME/jaxgen-runs/moment_stab_claims13 \\
        --publish=experiments/results/moment_stab_claims13

The study's DCGAN, losses and optimizer on all 55,000 training images; lr 0.01 and 0.001, the
term off (0) and on (0.1), seeds 0-3 (each seed's initialization, z stream and data order shared
by its four runs: a paired design); 3 epochs, 1,650 steps per run (15% of the reference's
11,000). Every 165 steps, 2,000 samples in both batch-norm modes are scored against the 10,000
MNIST test images.

The primary measure, fixed before the runs: the steps until `eval/fd` (batch statistics) first
falls below 50, with the term minus without, paired by seed. The threshold comes from the
anchors scored on 2,000 samples: real training images 0.77, uniform noise 529, moment-matched
noise (the term's own optimum) 128, real images of one digit only 108, six real digits repeated
61. Below 50 lies only a set of digits of several kinds and some variety, which none of those
reaches; matching the moments alone cannot get there.

Runtime: 2-core CPU, about 8 minutes a run at 0.25 s per step with its evaluations, so 16 runs
take about 2.3 hours; measured in the published report. One GPU: not measured (none was lent).
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 3
    c.learning_rates = (0.01, 0.001)
    c.seeds = (0, 1, 2, 3)
    c.eval_every_steps = 165
    c.eval_examples = 1000
    c.eval_samples = 2000
    c.fd_threshold = 50.0
    return c
