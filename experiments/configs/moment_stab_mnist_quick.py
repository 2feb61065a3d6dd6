"""The moment-stabilization study, shrunk to run in under 10 minutes on a 2-core CPU.

Command:
    python experiments/run.py --exp=moment_stab_mnist_quick --workdir=runs/moment_stab_mnist_quick

The same six settings, DCGAN and losses as `moment_stab_mnist`, but 3 epochs over the first
4,000 training images (40 steps per epoch, 120 steps per run, about 2% of the full study's
11,000), one seed, and 2,000 samples scored by the evaluator after the last epoch. It shows
the pipeline, the figures and the first movements of the losses and moment gaps; it is far too
short to judge the study's claims.

Runtime: 2-core CPU, 7.4 minutes for all six runs (444 s measured, compile, report and figures
included, compilation cache cold, before the final 2,000-sample evaluation of each run was
added: about 10 s a run more); one GPU: not measured (none was available).
Expected result: after 120 steps no setting draws clean digits yet; with the term on, the
moment gaps fall faster than with it off at every learning rate.
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 3
    c.train_examples = 4000
    c.eval_examples = 1000
    c.seeds = (0,)
    c.eval_samples = 2000  # scored once, after the last epoch
    c.eval_every_epochs = 3
    return c
