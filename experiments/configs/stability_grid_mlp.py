"""Which stability techniques matter, on the feed-forward GAN (cheap enough for a CPU): each
variant of `stability_grid` changes one switch of the baseline, the moment study's plain
feed-forward GAN (Adam, LeakyReLU 0.01, Glorot uniform), at lr 0.002 (the study's) and 0.02.

Command:
    python experiments/run.py --exp=stability_grid_mlp --workdir=runs/stability_grid_mlp

23 variants x 2 learning rates x 2 seeds = 92 runs, 3 epochs of 550 steps (batch 100; the
batch-50 variant has 1,100), evaluated every epoch on 2,000 samples against the 10,000 MNIST
test images. The runs of variants that keep the compiled setup (the baseline and the moment
term) train as one vmapped sweep, every other variant's four as a sweep of their own.

Runtime: 2-core CPU, about 25 minutes for the 92 runs (measured, compilation and evaluation
included). One GPU: not measured (none was available when this was written).

Expected result (experiments/results/stability_grid_mlp/, 3 epochs: the early phase only): at
lr 0.002 the baseline has collapsed to one digit (final eval/fd 213 +- 12); the moment term
(29.9), Adam b1 0.5 (45.7), translation with DiffAugment (49.9), batch 50 with the lr scaled
linearly (96.5), ELU (109) and Swish (129) are clearly better, ReLU and SGD with Nesterov
momentum clearly worse, and schedules, clipping by norm, L1, L2, AdamW and dropout within noise.
RMSprop diverges at both rates (its decay of 0.999 has no bias correction, so its first updates
are about 30 times the lr), and at lr 0.02 so do the two-time-scale D and clipping by value.
"""

import importlib.util
import os

from jaxgen.config import load_config


def get_config():
    here = os.path.dirname(os.path.abspath(__file__))
    c = load_config("moment_stab_mnist_mlp", here)
    c.epochs = 3
    c.learning_rates = (0.002, 0.02)
    c.moment_weights = (0.0,)
    c.seeds = (0, 1)
    c.eval_every_epochs = 1
    c.eval_samples = 2000
    c.fd_threshold = 50.0
    c.log_every_steps = 50
    c.steps_per_dispatch = 50
    c.variants = _variants()
    return c


def _variants() -> tuple[str, ...]:
    """stability_grid's variants, with the feed-forward GAN's own switches."""
    spec = importlib.util.spec_from_file_location(
        "stability_grid_variants", os.path.join(os.path.dirname(__file__), "stability_grid.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.variants(module.MLP_ONLY)
