"""Why does the moment term work? The term against its relatives, at lr 0.0001, where the plain
GAN collapses (`moment_stab_claim2`: 5 of 5 plain runs collapsed, none with the term).

Command:
    python experiments/run.py --exp=moment_why --workdir=$HOME/jaxgen-runs/moment_why
    python experiments/report.py --workdir=$HOME/jaxgen-runs/moment_why \\
        --publish=experiments/results/moment_why

Hypothesis under test: the variance part prevents the collapse, and the mean part fits the
images' brightness early. Variants (each one switch of the study's DCGAN, lr 0.0001), seeds 0-3
(each seed's initialization, z stream and data order shared by every variant: paired):

- `plain`: no term; `both`: the term as published (`0.1 * (mean gap + var gap)`, L1, against
  the real batch); `mean` and `var`: one part of it alone, at the same weight;
- `fixed`: both parts against the training set's per-pixel moments, computed once (no batch
  noise in the target); `l2`: both parts with squared gaps (whose gradient shrinks with the gap,
  where the L1 form's is a sign of constant size);
- `feature-matching`, `minibatch-std`, `mmd`: three other remedies for collapse, without the
  term: feature matching on D's features (Salimans et al. 2016, weight 1), a minibatch-stddev
  channel in D (Karras et al. 2018, groups of 4), and a Gaussian-kernel MMD between the fake and
  the real batch in pixel space (median-heuristic bandwidth, weight 1). Their weights are not
  tuned.

2 epochs, 1,100 steps per run, evaluated every 110 steps on 2,000 samples in both batch-norm
modes. With a term on, every step also logs the cosine between the term's and the adversarial
loss's gradients on G's parameters, their norm ratio, and the term's value for two independent
real batches (its batch-noise floor): `loss.term_diagnostics`.

Runtime: 2-core CPU, about 0.25 s a step without a term and 0.38 s with one and its diagnostics
(measured 2026-12-02), so about 3.5 hours for the 36 runs; on a 2-core AMD EPYC (AVX2) 1.8-2.3
steps/s, and 12 runs (six variants, seeds 0-1) took 2 h 11 min with the test suite run beside
them for part of it (2026-12-03). Published at seeds 0-1 (`experiments/results/moment_why/`).
`moment_why_parts` is its first four variants at 3 seeds, the part one session runs.
"""

import os

from jaxgen.config import load_config

VARIANTS = {
    "plain": "moment_weights=(0.0,),loss.term_diagnostics=False",
    "mean": "loss.moment_var_weight=0.0",
    "var": "loss.moment_mean_weight=0.0",
    "both": "",
    "fixed": "loss.moment_target=dataset",
    "l2": "loss.moment_form=l2",
    "feature-matching": "moment_weights=(0.0,),loss.feature_matching=1.0",
    "minibatch-std": "moment_weights=(0.0,),model.d_minibatch_std=4,loss.term_diagnostics=False",
    "mmd": "moment_weights=(0.0,),loss.mmd=1.0",
}


def variants(names) -> tuple[str, ...]:
    return tuple(f"{name}:{VARIANTS[name]}" for name in names)


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 2
    c.full_study_steps = 2 * 550
    c.learning_rates = (0.0001,)
    c.moment_weights = (0.1,)
    c.seeds = (0, 1, 2, 3)
    c.eval_every_steps = 110
    c.eval_examples = 1000
    c.eval_samples = 2000
    c.fd_threshold = 50.0  # as moment_stab_claim2 and moment_stab_claims13
    c.loss.term_diagnostics = True
    c.variants = variants(VARIANTS)
    return c
