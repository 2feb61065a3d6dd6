"""Which stability techniques matter: the moment-stabilization DCGAN, each variant changing one
switch of the baseline (the study's plain GAN), at a moderate and an aggressive learning rate.

Command:
    python experiments/run.py --exp=stability_grid --workdir=runs/stability_grid

Variants (`jaxgen.optim`, `jaxgen.augment`, `jaxgen.stability` and the model fields document
each switch): activations (ReLU, ELU, Swish against LeakyReLU 0.2), initializers (He normal,
Glorot normal against Glorot uniform), no batch norm, D dropout off, gradient clipping by global
norm and by value, L1 and L2 penalties, AdamW's decoupled weight decay, Adam b1 0.5, SGD with
Nesterov momentum, RMSprop, a two-time-scale D (2x lr), cosine with warmup, cyclical, one-cycle
and step-decay schedules, translation augmentation (real and fake, DiffAugment-style), batch
50 with the lr scaled linearly, and the moment term. Learning rates 0.001 and 0.01, seeds 0 and
1, 5 epochs of 550 steps, evaluated every epoch on 10,000 samples.

Runtime: 2-core CPU: not run at this scale (about 0.3 s a run-step: 96 runs x 2,750 steps is
about 22 hours). One GPU: not measured (none was available when this was written).
For the feed-forward GAN's grid, which runs on a CPU, see `stability_grid_mlp`.

Expected result: not measured yet at this scale; `experiments/results/stability_grid_mlp/`
holds the feed-forward GAN's answer.
"""

import os

from jaxgen.config import load_config

ONE_SWITCH = {
    "relu": "model.activation=relu",
    "elu": "model.activation=elu",
    "swish": "model.activation=swish",
    "he-normal": "model.kernel_init=he_normal",
    "glorot-normal": "model.kernel_init=glorot_normal",
    "clip-norm": "g_optimizer.clip_norm=1.0,d_optimizer.clip_norm=1.0",
    "clip-value": "g_optimizer.clip_value=0.01,d_optimizer.clip_value=0.01",
    "l1": "g_optimizer.l1=1e-6,d_optimizer.l1=1e-6",
    "l2": "g_optimizer.l2=1e-4,d_optimizer.l2=1e-4",
    "adamw": ("g_optimizer.name=adamw,g_optimizer.weight_decay=0.01,"
              "d_optimizer.name=adamw,d_optimizer.weight_decay=0.01"),
    "b1-0.5": "g_optimizer.b1=0.5,d_optimizer.b1=0.5",
    "sgd-nesterov": ("g_optimizer.name=sgd,g_optimizer.momentum=0.9,g_optimizer.nesterov=True,"
                     "d_optimizer.name=sgd,d_optimizer.momentum=0.9,d_optimizer.nesterov=True"),
    "rmsprop": "g_optimizer.name=rmsprop,d_optimizer.name=rmsprop",
    "ttur": "d_optimizer.lr_scale=2.0",
    "cosine": ("g_optimizer.schedule.name=cosine,g_optimizer.schedule.warmup_steps=200,"
               "d_optimizer.schedule.name=cosine,d_optimizer.schedule.warmup_steps=200"),
    "cyclical": ("g_optimizer.schedule.name=cyclical,g_optimizer.schedule.decay_steps=275,"
                 "g_optimizer.schedule.min_ratio=0.1,d_optimizer.schedule.name=cyclical,"
                 "d_optimizer.schedule.decay_steps=275,d_optimizer.schedule.min_ratio=0.1"),
    "one-cycle": "g_optimizer.schedule.name=one_cycle,d_optimizer.schedule.name=one_cycle",
    "step-decay": ("g_optimizer.schedule.name=step,g_optimizer.schedule.decay_steps=1100,"
                   "g_optimizer.schedule.decay_rate=0.5,d_optimizer.schedule.name=step,"
                   "d_optimizer.schedule.decay_steps=1100,d_optimizer.schedule.decay_rate=0.5"),
    "translate": "augment.translate=2,augment.fake=True",
    "batch50": ("batch_size=50,g_optimizer.batch_scaling=linear,"
                "d_optimizer.batch_scaling=linear"),
    "moment-term": "moment_weights=(0.1,)",
}
DCGAN_ONLY = {"no-batchnorm": "model.norm=none", "no-dropout": "model.d_dropout=0.0"}
MLP_ONLY = {"dropout": "model.d_dropout=0.3"}


def variants(extra: dict[str, str]) -> tuple[str, ...]:
    """The baseline first (the ranking compares every variant with it), then one per switch."""
    return ("baseline:",) + tuple(f"{k}:{v}" for k, v in {**ONE_SWITCH, **extra}.items())


def get_config():
    c = load_config("moment_stab_mnist", os.path.dirname(os.path.abspath(__file__)))
    c.epochs = 5
    c.full_study_steps = 5 * 550
    c.learning_rates = (0.001, 0.01)
    c.moment_weights = (0.0,)
    c.seeds = (0, 1)
    c.fd_threshold = 100.0
    c.variants = variants(DCGAN_ONLY)
    return c
