"""The blog's first next step: does the moment term let a smaller DeConvNet train well?

Command:
    python experiments/run.py --exp=moment_stab_small_g \\
        --workdir=$HOME/jaxgen-runs/moment_stab_small_g
    python experiments/report.py --workdir=$HOME/jaxgen-runs/moment_stab_small_g \\
        --publish=experiments/results/moment_stab_small_g

The study's DCGAN with G's base 7x7x64 instead of 7x7x256: 12.86M of the study G's 13.04M
parameters sit in its Dense 1024 -> 7x7x256 layer, and this G has 3.34M in all (its dense layer
3.21M). D, the losses, Adam and the data as in the study; lr 0.01, 0.001, 0.0001, the term off
and on, seeds 0-2 (paired); the CPU-scale protocol of `moment_stab_claims13`: 3 epochs, 1,650
steps per run (15% of the reference's 11,000), 2,000 samples scored every 165 steps, the
primary measure the steps until `eval/fd` < 50, and the same rules (`jaxgen.study`).

Runtime: 2-core CPU, not measured yet (the smaller G's step does about a quarter of the study
step's dense-layer work).
"""

import os

from jaxgen.config import load_config


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.model.g_base_channels = 64
    c.epochs = 3
    c.seeds = (0, 1, 2)
    c.eval_every_steps = 165
    c.eval_examples = 1000
    c.eval_samples = 2000
    c.fd_threshold = 50.0  # justified in moment_stab_claims13
    return c
