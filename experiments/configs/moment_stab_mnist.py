"""Moment stabilization on MNIST: the study's DCGAN at three Adam learning rates, with and without
the moment term `0.1 * sum|mean(fake) - mean(real)| + 0.1 * sum|var(fake) - var(real)|`.

Command:
    python experiments/run.py --exp=moment_stab_mnist --workdir=runs/moment_stab_mnist

Eighteen runs (lr 0.01, 0.001, 0.0001 x moment weight 0, 0.1 x seeds 0, 1, 2), batch 100, 20
epochs of 550 steps on 55,000 training images (the first 5,000 of the training file held out for
validation), each evaluated every epoch (jaxgen.evaluator: 10,000 samples in both batch-norm
modes against the 10,000 MNIST test images).

Runtime: 2-core CPU, 0.52 s per train step when measured (0.18-0.19 s since, 2026-12-01:
`benchmarks/README.md`);
one epoch with its evaluation took 299 s (measured, before the 10,000-sample evaluation, which
adds about 30 s), so a run takes about 1.8 hours and the study 33 hours. One GPU: not measured
(no GPU was available when this was written). Every epoch is checkpointed: rerunning the same
command resumes. The grid trains as one vmapped sweep on an accelerator, one run after another
on CPU (`sweep_mode=auto`).
For a 10-minute CPU variant see `moment_stab_mnist_quick`.

Expected result (the study's claim, not yet verified by jaxgen): with the term the moment gaps
fall faster and digits appear sooner at every learning rate; at 0.0001 the plain GAN collapses
while the term rescues it; at 0.001 the two are closest.
"""

import ml_collections

from jaxgen import augment, optim, stability


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "gan"
    c.data_dir = ""  # --data_dir, $JAXGEN_DATA_DIR, or a download (data.download_mnist)
    # "mnist", or "image_folder": any folder of images as --data_dir (model.image_channels 1 or
    # 3), without the evaluator's MNIST metrics (jaxgen.trainers.gan.load_splits)
    c.data_format = "mnist"
    c.epochs = 20
    c.batch_size = 100
    c.train_examples = -1  # cap on training images; -1 uses all 55,000
    c.val_examples = 5000  # held out from the start of the training file (TF read_data_sets)
    c.eval_examples = 5000  # generated images compared with the held-out ones every epoch
    # The evaluator (jaxgen.evaluator): eval_samples generated images against the first
    # eval_reference MNIST test images (10,000 each in the protocol of Lucic et al. 2018).
    c.eval_samples = 10000
    c.eval_reference = 10000
    c.eval_every_epochs = 1
    # > 0: evaluate (and save samples and a checkpoint) every this many steps instead, each
    # evaluation with the eval metrics, and at the end.
    c.eval_every_steps = 0
    # Steps per run of this study at full scale (20 epochs of 550): each report states its
    # runs' share of it. Configs derived from this one at another full scale set their own.
    c.full_study_steps = 11000
    # The report counts epochs until eval/fd first falls below this. For scale: the floor (MNIST
    # train vs test) is 0.29, uniform noise 528, and one epoch at lr 0.001 with the term, which
    # already draws digits, 68. 20 asks for clearly better than that first epoch.
    c.fd_threshold = 20.0
    c.z_dim = 100  # z ~ U(-1, 1)

    # The grid: one run per (learning rate, moment weight, seed).
    c.learning_rates = (0.01, 0.001, 0.0001)
    c.moment_weights = (0.0, 0.1)
    c.seeds = (0, 1, 2)

    c.model = ml_collections.ConfigDict()
    c.model.arch = "dcgan"
    c.model.g_hidden = 1024
    c.model.g_base_channels = 256  # G reshapes to (7, 7, this)
    c.model.g_mid_channels = 32
    c.model.image_channels = 1  # G's output and D's input: 1 (grayscale) or 3 (RGB)
    c.model.d_channels = (32, 256)
    c.model.d_dropout = 0.5
    c.model.d_minibatch_std = 0  # > 0: D's minibatch-stddev channel over groups of this size
    c.model.activation = "leaky_relu"
    c.model.slope = 0.2
    c.model.kernel_init = "glorot_uniform"
    c.model.bias_init = 0.1
    c.model.norm = "batch"  # "batch" (G and D) or "none"
    c.model.bn_momentum = 0.99  # TF's batch norm
    c.model.bn_epsilon = 1e-3

    c.loss = ml_collections.ConfigDict()
    c.loss.real_label = 0.9  # one-sided label smoothing
    c.loss.fake_label = 0.0
    # G's loss terms beside the adversarial one (jaxgen.trainers.gan.term_settings). The study's
    # term: the run's moment_weight (the grid's axis) on both parts, L1 gaps against the real
    # batch's moments. Its relatives, for the moment_why study:
    c.loss.moment_mean_weight = -1.0  # -1: the run's moment_weight; >= 0: this part's own
    c.loss.moment_var_weight = -1.0
    c.loss.moment_form = "l1"  # "l1" (the study's) or "l2" (squared gaps)
    c.loss.moment_target = "batch"  # "batch" (the real batch's moments) or "dataset" (fixed)
    c.loss.feature_matching = 0.0  # weight of feature matching on D's features (0: off)
    c.loss.mmd = 0.0  # weight of the pixel-space Gaussian-kernel MMD (0: off)
    c.loss.term_diagnostics = False  # log the terms' gradient against the adversarial one

    # One optimizer per network (jaxgen.optim documents every field: Adam/AdamW/SGD/RMSprop,
    # clipping, L1/L2, weight decay, schedules, batch-size scaling); the lr comes from the grid.
    c.g_optimizer = optim.default_config("adam")  # TF's Adam defaults (0.9, 0.999, 1e-8)
    c.d_optimizer = optim.default_config("adam")

    c.augment = augment.default_config()  # on-device augmentation of the real batch (off)
    c.stability = stability.default_config()  # bad-step, spike and saturation detectors
    # Named variants of the whole setup, each "name:key=value,key=value" (overrides as on the
    # command line), crossed with the grid; () trains the config as it is.
    c.variants = ()

    # How the grid runs: "vmap" trains all its runs as one sweep (one compiled program, states
    # stacked, every run on the same data stream); "sequential" one run after another; "auto"
    # sequential on CPU, vmap on an accelerator (measured: sharding.resolve_sweep_mode).
    c.sweep_mode = "auto"
    c.mesh_sweep = 1  # devices along the mesh's sweep axis (runs split over them); rest: data
    # The data order: -1 draws it from each run's seed, as the reference reshuffled MNIST in
    # every run (the runs of one seed across the settings still share their initialization, z
    # stream and data order: a paired design); a seed >= 0 gives every run that one order.
    c.data_seed = -1
    c.max_skipped_steps = 10  # bad steps (non-finite, or a loss above stability.max_loss) before
    # a run is frozen at its last good state as diverged

    c.log_every_steps = 10
    # Train steps per device call (lax.scan over steps when above 1). 1 for the DCGAN: on CPU,
    # XLA runs its step 7x slower inside a scan; small models gain from more.
    c.steps_per_dispatch = 1
    c.checkpoint_every_steps = 0  # extra checkpoints inside an epoch; 0: at epoch ends only
    c.keep_checkpoints = 2
    c.num_fixed_samples = 100  # fixed z drawn every epoch for the figures
    c.sample_seed = 2024  # the fixed z of figures and evaluation, shared by every run
    c.tensorboard = True
    return c
