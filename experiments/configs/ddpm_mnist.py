"""A DDPM trained from scratch on MNIST (Ho et al. 2020), studied over noise schedule x learning
rate: does the cosine schedule (Nichol & Dhariwal 2021), designed for low resolutions where the
linear schedule destroys the image well before t = T, train faster or reach a better likelihood
and sample quality, and does the answer depend on the learning rate? These are the two knobs the
DDPM literature changed first, and they interact: the schedule sets which noise levels the loss
weights, the learning rate how fast the network fits them.

Command:
    python experiments/run.py --exp=ddpm_mnist --workdir=runs/ddpm_mnist

The model (jaxgen/models/unet.py): a UNet of residual blocks (GroupNorm, Swish, dropout 0.1),
self-attention at 14x14 and 7x7, widths 64-128-128, two blocks per level (6.8M parameters).
T = 1000; epsilon-prediction MSE; Adam with gradient clipping at 1 and a 1,000-step warmup (Ho
et al.'s recipe at MNIST scale); the parameters' moving average (half-life 500,000 images,
ramp-up 0.1) samples and is evaluated. Every 5 epochs and at the end: the variational bound in
bits/dim on the 10,000 MNIST test images with all 999 KL terms summed exactly, and eval/fd,
coverage, precision and recall of 10,000 DDIM samples (100 steps) against the test images.

The study: schedule {linear, cosine} x lr {1e-4, 2e-4, 5e-4} x seeds {0, 1}: 12 runs of 30
epochs (12,900 steps of batch 128).

Runtime: 2-core CPU, 44 s per train step at batch 128 when measured, 15.8 s since (2026-12-01;
`benchmarks/train_step.py --model=ddpm`),
so a run of 12,900 steps would take about 6.5 days at 44 s, 2.4 days at 15.8 s: not feasible
(`ddpm_mnist_cpu` is the published CPU scale). One GPU: not measured (none was available).
Expected result: experiments/results/ddpm_mnist_cpu/report.md at CPU scale; the full scale is not
yet run.
"""

import ml_collections

from jaxgen import optim, stability
from jaxgen.models import unet


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "diffusion"
    c.data_dir = ""  # --data_dir, $JAXGEN_DATA_DIR, or a download (data.download_mnist)
    c.epochs = 30
    c.batch_size = 128
    c.full_study_steps = 30 * (55000 // 128)  # each report states its runs' share of it
    c.train_examples = -1  # cap on training images; -1 uses all 55,000
    # Held out from the start of the training file (TF's read_data_sets): the validation loss.
    c.val_examples = 5000

    # The grid: one run per (noise schedule, learning rate, seed).
    c.schedules = ("linear", "cosine")
    c.learning_rates = (1e-4, 2e-4, 5e-4)
    c.seeds = (0, 1)

    c.model = unet.default_model_config()
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.timesteps = 1000  # T

    c.optimizer = optim.default_config("adam")
    c.optimizer.clip_norm = 1.0
    c.optimizer.schedule.warmup_steps = 1000
    # The parameters' moving average (optim.ema_decay): half-life in images and ramp-up.
    c.ema_half_life = 500_000.0
    c.ema_rampup = 0.1

    # Samplers: DDPM ancestral (eta 1) and DDIM (eta 0), each over this many timesteps.
    c.sampler = ml_collections.ConfigDict()
    c.sampler.ddpm_steps = 1000
    c.sampler.ddim_steps = 100
    c.sampler.eval = "ddim"  # the sampler whose samples the evaluator scores
    c.sample_batch = 500  # samples, bits/dim and validation are computed in batches of this

    # Evaluation, every eval_every_epochs and at the end.
    c.eval_every_epochs = 5
    c.bpd_examples = 10000  # MNIST test images whose bound is computed (0: none)
    c.bpd_terms = 999  # KL terms per image: T - 1 sums the bound exactly; fewer estimate it
    c.eval_samples = 10000  # scored by the evaluator against eval_reference test images
    c.eval_reference = 10000
    c.fd_threshold = 20.0  # the report counts epochs until eval/fd falls below this
    c.num_fixed_samples = 500  # per sampler, drawn every epoch for the figures

    c.stability = stability.default_config()  # bad-step guard, spike detectors, early stopping
    c.stability.max_loss = 10.0  # the simple loss starts near 1
    c.sweep_mode = "sequential"  # runs train one after another
    c.mesh_sweep = 1
    c.data_seed = 0  # the data order, shared by every run (a run's seed: init and noise)
    c.max_skipped_steps = 10
    c.log_every_steps = 50
    c.steps_per_dispatch = 1
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    c.sample_seed = 2024  # the fixed samples' and evaluation's keys, shared by every run
    c.tensorboard = True
    return c
