"""Two-player GAN training, shared by every GAN family (the moment-stabilization study's DCGAN and
feed-forward GAN, the conditional GAN, the small StyleGAN2).

One pytree holds the whole two-player state (`g_`/`d_` names, one optimizer per player). The train
step is a pure function `(state, batch) -> (state, metrics)`: D is updated once, then G once with
the same z against the updated D. Per-step randomness is `fold_in(state.rng, state.step)` and the
data order a function of (seed, epoch), so a resumed run needs no saved RNG and is exact.

Per-run hyperparameters (learning rates, the moment weight) are data in the state, so one
compiled step serves every run of a study. What a family needs beyond the DCGAN is switched on by
its config: labels (`model.num_classes`: G and D take `labels=`; G draws uniformly random digits),
lazy R1 on real images (`loss.r1_gamma` every `loss.r1_every` steps), an exponential moving
average of G's parameters used for every sample and evaluation (`g_ema_half_life` in images,
`g_ema_rampup`), 32x32 models (the real batch padded, samples cropped back to MNIST's 28x28 for
evaluation), and per-layer noise and style mixing (the `noise` rng stream).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxgen import augment, data, grid, image_folder, loop, losses, optim, sharding, stability
from jaxgen import config as config_lib
from jaxgen.errors import UserError
from jaxgen.evaluator import metrics as eval_metrics
from jaxgen.log import BN_MODES, BOUNDS_FILE, CEILING, FLOOR, MOMENT_MATCHED, save_samples
from jaxgen.models import cgan, dcgan, mlp_gan, stylegan

# Sweep axes of a GAN study: (run field, config field listing its values, short name for folders).
SWEEP_AXES = (("learning_rate", "learning_rates", "lr"),
              ("moment_weight", "moment_weights", "moment"),
              ("seed", "seeds", "seed"))
EVAL_PREFIXES = {"batch_stats": "eval/", "moving_avg": "eval_movavg/"}


@flax.struct.dataclass
class GANState:
    step: jax.Array
    rng: jax.Array  # raw uint32[2] key of this run's training randomness
    g_params: dict
    g_batch_stats: dict
    g_opt_state: optax.OptState
    d_params: dict
    d_batch_stats: dict
    d_opt_state: optax.OptState
    moment_weight: jax.Array
    skipped: jax.Array  # bad steps skipped (non-finite or too large); frozen at the limit
    monitor: dict  # running statistics of the spike detectors (`stability.observe`)
    early_stop: dict  # best eval metric so far and patience used (`stability.early_stop`)
    g_ema_params: dict  # moving average of g_params ({} unless `g_ema_half_life`)


ARCHITECTURES = {"dcgan": dcgan.make_models, "mlp": mlp_gan.make_models,
                 "cgan": cgan.make_models, "stylegan": stylegan.make_models}
IMAGE_SIZES = {"stylegan": stylegan.IMAGE_SIZE}  # models of another size than MNIST's 28
# Metrics whose spikes (z-scores against their running mean) the step watches.
WATCHED = ("d/loss", "g/loss", "d/grad_norm", "g/grad_norm")
LOSSES = ("d/loss", "g/adv_loss")  # either above stability.max_loss: a bad step (the moment
# term, a sum over pixels, is left out: it starts near 100 in the study by its scale alone)


def make_models(config: ml_collections.ConfigDict):
    if config.model.arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {config.model.arch!r}; choose one of "
                         f"{sorted(ARCHITECTURES)}")
    return ARCHITECTURES[config.model.arch](config.model)


def image_size(config: ml_collections.ConfigDict) -> int:
    """The side of the images G draws and D sees (MNIST's 28, or 32 for the StyleGAN)."""
    return IMAGE_SIZES.get(config.model.arch, 28)


def num_classes(config: ml_collections.ConfigDict) -> int:
    """Classes G and D are conditioned on; 0 for an unconditional GAN."""
    return config.model.get("num_classes", 0)


def ema_half_life(config: ml_collections.ConfigDict) -> float:
    """Half-life in images of G's parameter average (StyleGAN2's `ema_kimg`); 0: no average."""
    return config.get("g_ema_half_life", 0.0)


DATA_FORMATS = ("mnist", "image_folder")


def data_format(config: ml_collections.ConfigDict) -> str:
    """`mnist` (the data folder's `mnist/` IDX files) or `image_folder` (any folder of images,
    `image_folder.list_images`: grayscale or RGB by `model.image_channels`, at the model's
    size)."""
    return config.get("data_format", "mnist")


def image_channels(config: ml_collections.ConfigDict) -> int:
    """Channels of the images G draws and D sees: 1 (grayscale, MNIST's) or 3 (RGB)."""
    return config.model.get("image_channels", 1)


def load_splits(config: ml_collections.ConfigDict) -> data.Splits:
    """The runs' data. MNIST: the reference's splits (`data.mnist_splits`). An image folder:
    its images in an order shuffled once (seed 0, so that validation does not take one
    subfolder), the first `val_examples` held out, the rest for training (the first
    `train_examples` of them if that is positive); labels 0 and no test split (the evaluator's
    classifier is MNIST's and does not apply)."""
    if data_format(config) == "mnist":
        return data.mnist_splits(config.data_dir, config.val_examples, config.train_examples)
    files = image_folder.list_images(config.data_dir)
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    val, train = files[:config.val_examples], files[config.val_examples:]
    if config.train_examples > 0:
        train = train[:config.train_examples]
    size, channels = image_size(config), image_channels(config)
    train_images, val_images = (
        image_folder.load_images(config.data_dir, f, size, channels) if f
        else np.zeros((0, size, size, channels), np.uint8) for f in (train, val))
    empty = np.zeros((0,), np.uint8)
    return data.Splits(train_images, np.zeros(len(train), np.uint8), val_images,
                       np.zeros(len(val), np.uint8), val_images[:0], empty)


def resolve_data(config: ml_collections.ConfigDict) -> str:
    """The data folder the runs read (checked, and its training split at least one batch)."""
    if data_format(config) not in DATA_FORMATS:
        raise UserError(f"Unknown --config.data_format={data_format(config)}. Fix: choose one "
                        f"of {', '.join(DATA_FORMATS)}.")
    if data_format(config) == "image_folder":
        files = image_folder.list_images(config.data_dir)
        n = len(files) - config.val_examples
        if min(n, config.train_examples if config.train_examples > 0 else n) < config.batch_size:
            raise UserError(f"The image folder {config.data_dir} holds {len(files)} images: "
                            f"with --config.val_examples={config.val_examples} held out, fewer "
                            f"than one batch of {config.batch_size} is left to train on. Fix: "
                            "add images, or lower --config.val_examples or "
                            "--config.batch_size.")
        return os.path.abspath(config.data_dir)
    folder = data.check_mnist(config.data_dir)
    data.check_training_split(folder, config.val_examples, config.train_examples,
                              config.batch_size)
    return folder


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses a run config that cannot train, before anything is written or compiled."""
    for where in ("g_optimizer", "d_optimizer"):
        optim.check_config(config[where], where)
    try:
        make_models(config)
        augment.check_config(config.augment, image_size(config))
    except ValueError as e:
        raise UserError(f"Run {config.run.name}: {e}. Fix: change that --config field (or the "
                        "variant that sets it).") from None
    if config.model.norm not in dcgan.NORMS:
        raise UserError(f"Run {config.run.name}: unknown --config.model.norm="
                        f"{config.model.norm}. Fix: choose one of {', '.join(dcgan.NORMS)}.")
    check_terms(config)
    if config.loss.get("r1_gamma", 0.0) < 0 or config.loss.get("r1_every", 1) < 1:
        raise UserError(f"Run {config.run.name}: --config.loss.r1_gamma="
                        f"{config.loss.r1_gamma} and --config.loss.r1_every="
                        f"{config.loss.r1_every} must be >= 0 and >= 1. Fix: give R1's weight "
                        "(0 switches it off) and the steps between its lazy updates.")
    if ema_half_life(config) < 0 or config.get("g_ema_rampup", 0.0) < 0:
        rampup = config.get("g_ema_rampup", 0.0)
        raise UserError(f"Run {config.run.name}: --config.g_ema_half_life="
                        f"{ema_half_life(config)} or --config.g_ema_rampup={rampup} is "
                        "negative. Fix: give the half-life of G's parameter average in images "
                        "(StyleGAN2: 10000; 0: none) and its ramp-up (StyleGAN2-ADA: 0.05; "
                        "0: none).")


MOMENT_TARGETS = ("batch", "dataset")
FEATURE_ARCHS = ("dcgan",)  # Ds that sow their features (`intermediates/features`)


def term_settings(loss: ml_collections.ConfigDict) -> dict:
    """G's loss terms beside the adversarial one, from the `loss` sub-config, with their
    defaults (the study's term as published): `moment_mean_weight` and `moment_var_weight`
    (-1: the run's `moment_weight`, the grid's axis; >= 0: that part's own weight),
    `moment_form` (`l1`, the study's, or `l2`), `moment_target` (`batch`: the real batch's
    moments; `dataset`: the training set's, computed once), `feature_matching` and `mmd` (the
    weights of `losses.feature_matching` on D's features and of `losses.pixel_mmd`; 0: off),
    and `term_diagnostics` (log, every step, how the terms' gradient on G's parameters relates
    to the adversarial one, and the terms' batch-noise floor)."""
    return {"moment_mean_weight": loss.get("moment_mean_weight", -1.0),
            "moment_var_weight": loss.get("moment_var_weight", -1.0),
            "moment_form": loss.get("moment_form", "l1"),
            "moment_target": loss.get("moment_target", "batch"),
            "feature_matching": loss.get("feature_matching", 0.0),
            "mmd": loss.get("mmd", 0.0),
            "term_diagnostics": loss.get("term_diagnostics", False)}


def check_terms(config: ml_collections.ConfigDict) -> None:
    """Refuses settings of G's extra loss terms (`term_settings`) that cannot train."""
    terms, name = term_settings(config.loss), config.run.name
    for key in ("moment_mean_weight", "moment_var_weight"):
        if not (terms[key] == -1.0 or (np.isfinite(terms[key]) and terms[key] >= 0)):
            raise UserError(f"Run {name}: --config.loss.{key}={terms[key]} must be -1 (the "
                            "run's moment weight) or a finite weight >= 0. Fix: give e.g. "
                            f"--config.loss.{key}=0.0 to switch that part off.")
    for key in ("feature_matching", "mmd"):
        if not (np.isfinite(terms[key]) and terms[key] >= 0):
            raise UserError(f"Run {name}: --config.loss.{key}={terms[key]} must be a finite "
                            f"weight >= 0 (0: off). Fix: give e.g. --config.loss.{key}=1.0.")
    choices = {"moment_form": losses.MOMENT_FORMS, "moment_target": MOMENT_TARGETS}
    for key, options in choices.items():
        if terms[key] not in options:
            raise UserError(f"Run {name}: unknown --config.loss.{key}={terms[key]}. Fix: "
                            f"choose one of {', '.join(options)}.")
    if image_channels(config) not in (1, 3) or (image_channels(config) == 3
                                                 and config.model.arch != "dcgan"):
        raise UserError(f"Run {name}: --config.model.image_channels={image_channels(config)} "
                        "must be 1 (grayscale) or 3 (RGB, the dcgan family only). Fix: give "
                        "--config.model.image_channels=1 or 3.")
    mbstd = config.model.get("d_minibatch_std", 0)
    if mbstd < 0 or (mbstd and config.model.arch != "dcgan"):
        raise UserError(f"Run {name}: --config.model.d_minibatch_std={mbstd} must be 0 (off) "
                        "or a group size >= 1, and applies to the dcgan D only (the StyleGAN's "
                        "has its own, model.mbstd_group). Fix: give e.g. "
                        "--config.model.d_minibatch_std=4.")
    if terms["feature_matching"] and config.model.arch not in FEATURE_ARCHS:
        raise UserError(f"Run {name}: feature matching needs D's features, which only the "
                        f"{', '.join(FEATURE_ARCHS)} D gives, not model.arch="
                        f"{config.model.arch}. Fix: set --config.loss.feature_matching=0.")


def _conditioning(labels: jax.Array | None) -> dict:
    """The keyword argument that conditions G and D on labels (none for an unconditional GAN)."""
    return {} if labels is None else {"labels": labels}


def create_state(key: jax.Array, *, g_model, d_model, g_tx, d_tx, g_opt, d_opt, z_dim: int,
                 image_shape, batch_size: int, learning_rate: float | jax.Array,
                 moment_weight: float | jax.Array, classes: int = 0,
                 g_ema: bool = False) -> GANState:
    """A run's initial state; `learning_rate` is the grid's, which each network scales as its
    optimizer config says (`optim.run_learning_rate`)."""
    init_key, rng = jax.random.split(key)
    g_key, d_key, drop_key = jax.random.split(init_key, 3)
    cond = _conditioning(jnp.zeros((2,), jnp.int32) if classes else None)
    g_vars = g_model.init(g_key, jnp.zeros((2, z_dim)), train=False, **cond)
    d_vars = d_model.init({"params": d_key, "dropout": drop_key}, jnp.zeros((2, *image_shape)),
                          **cond)
    return GANState(
        step=jnp.zeros((), jnp.int32), rng=rng,
        g_params=g_vars["params"], g_batch_stats=g_vars.get("batch_stats", {}),
        g_opt_state=optim.init_optimizer(
            g_tx, g_vars["params"], optim.run_learning_rate(g_opt, learning_rate, batch_size)),
        d_params=d_vars["params"], d_batch_stats=d_vars.get("batch_stats", {}),
        d_opt_state=optim.init_optimizer(
            d_tx, d_vars["params"], optim.run_learning_rate(d_opt, learning_rate, batch_size)),
        moment_weight=jnp.asarray(moment_weight, jnp.float32), skipped=jnp.zeros((), jnp.int32),
        monitor=stability.init_monitor(WATCHED), early_stop=stability.init_early_stop(),
        g_ema_params=g_vars["params"] if g_ema else {})


def r1_penalty(d_apply: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
    """R1 (Mescheder et al. 2018, eq. 9): the mean over real images of |grad_x D(x)|^2, the
    gradient of the logit with respect to the image. `d_apply` maps images to logits."""
    grads = jax.grad(lambda x: d_apply(x).sum())(real)
    return jnp.square(grads).reshape(len(real), -1).sum(1).mean()


def _norms(prefix: str, grads, updates, params) -> dict[str, jax.Array]:
    return {f"{prefix}/grad_norm": optax.tree.norm(grads),
            f"{prefix}/update_norm": optax.tree.norm(updates),
            f"{prefix}/param_norm": optax.tree.norm(params)}


def step_z(state: GANState, n: int, z_dim: int) -> jax.Array:
    """The z that the train step at `state.step` feeds G: U(-1, 1)^z_dim, n rows, drawn from
    the run's seed and the step alone."""
    z_key = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)[0]
    return jax.random.uniform(z_key, (n, z_dim), minval=-1.0, maxval=1.0)


def train_step(state: GANState, batch: dict[str, jax.Array], *, g_model, d_model, g_tx, d_tx,
               z_dim: int, real_label: float, fake_label: float,
               max_skipped_steps: int, g_opt, d_opt, aug, stab, total_steps: int,
               classes: int = 0, r1_gamma: float = 0.0, r1_every: int = 1,
               g_ema_half_life: float = 0.0, g_ema_rampup: float = 0.0,
               terms: dict | None = None) -> tuple[GANState, dict[str, jax.Array]]:
    """One D update then one G update. `batch`: `images`, real images in [-1, 1], NHWC, at the
    model's size; `labels`, their digits; `step`, the global step (shared by a sweep's members,
    so the lazy-R1 branch below is a real branch under `vmap`).

    G runs forward once: its output feeds D's update (gradient stopped) and, through the updated
    D, G's loss, whose gradient goes back through the saved forward pass (`jax.vjp`). The
    reference ran G forward twice with identical results (batch norm on batch statistics), but
    updated G's moving averages once per step: its update ops hang on the G step alone
    (`tf.control_dependencies(UPDATE_OPS)` around G's optimizer; the D step runs none). So here
    the one forward pass updates them once, with momentum `bn_momentum`. D's passes update its
    moving averages (bookkeeping only: D always uses batch statistics).

    A conditional GAN (`classes` > 0) draws G's digits uniformly at random and shows D the real
    images with their labels, the fakes with theirs. Lazy R1 (StyleGAN2, section B): every
    `r1_every` steps D's loss adds `r1_gamma / 2 * r1_every * R1` on the real batch as D sees it.
    With `g_ema_half_life` > 0, G's parameter average follows every good step (`optim.ema_decay`).

    G's loss is the adversarial loss plus its terms (`terms`: `term_settings`): the moment term
    (weighted by the run's `moment_weight`, or per part), feature matching on D's features of
    the fake and the real batch under the updated D, and the pixel MMD. With
    `term_diagnostics`, G's gradient is computed as its two parts, the adversarial loss's and
    the terms', whose cosine and norm ratio are logged (`diag/...`), and the terms are also
    computed for a second real batch in place of the fakes (`batch["images_b"]`): the value
    that batch noise alone gives them.

    Stability switches (`g_opt`/`d_opt`: `jaxgen.optim`; `aug`: `jaxgen.augment`; `stab`:
    `jaxgen.stability`): L1/L2 penalties are added to each network's loss; augmentation
    transforms the real batch D sees (and G's samples, DiffAugment-style, if `aug.fake`), while
    the moment term compares G's samples with the batch as loaded. A bad step (non-finite, or a
    loss above `stab.max_loss`) changes nothing but `skipped`; once a run has skipped
    `max_skipped_steps` steps, or early stopping has stopped it, it is frozen.
    """
    terms = term_settings(ml_collections.ConfigDict()) if terms is None else terms
    images = batch["images"]
    key = jax.random.fold_in(state.rng, state.step)
    _, d_real_key, d_fake_key, g_key = jax.random.split(key, 4)
    # Augmentation, G's labels and G's noise draw from their own branches: switching one on
    # leaves the other streams as they were.
    real_aug_key, fake_aug_key, g_aug_key = jax.random.split(jax.random.fold_in(key, 1), 3)
    label_key, noise_key = jax.random.split(jax.random.fold_in(key, 2))
    z = step_z(state, images.shape[0], z_dim)
    real_cond = _conditioning(batch["labels"] if classes else None)
    fake_cond = _conditioning(jax.random.randint(label_key, (images.shape[0],), 0, classes)
                              if classes else None)
    seen_real = augment.apply(images, real_aug_key, aug)

    def to_d(fake, key):  # what D sees of G's samples
        return augment.apply(fake, key, aug) if aug.fake else fake

    def g_forward(g_params):
        fake, g_vars = g_model.apply({"params": g_params, "batch_stats": state.g_batch_stats},
                                     z, train=True, mutable=["batch_stats"],
                                     rngs={"noise": noise_key}, **fake_cond)
        return fake, g_vars.get("batch_stats", {})

    fake, g_vjp, g_batch_stats = jax.vjp(g_forward, state.g_params, has_aux=True)

    def d_loss_fn(d_params):
        real_logits, d_vars = d_model.apply(
            {"params": d_params, "batch_stats": state.d_batch_stats}, seen_real,
            rngs={"dropout": d_real_key}, mutable=["batch_stats"], **real_cond)
        fake_logits, d_vars = d_model.apply(
            {"params": d_params, "batch_stats": d_vars["batch_stats"]},
            to_d(jax.lax.stop_gradient(fake), fake_aug_key), rngs={"dropout": d_fake_key},
            mutable=["batch_stats"], **fake_cond)
        loss_real, loss_fake = losses.d_loss(real_logits, fake_logits, real_label, fake_label)
        aux = {"d/loss_real": loss_real, "d/loss_fake": loss_fake,
               "d/acc_real": (real_logits > 0).mean(), "d/acc_fake": (fake_logits < 0).mean(),
               "d/penalty": optim.penalty(d_params, d_opt)}
        loss = aux["d/loss"] = loss_real + loss_fake + aux["d/penalty"]  # logged without R1
        if r1_gamma:
            def d_apply(x):
                return d_model.apply({"params": d_params, "batch_stats": state.d_batch_stats},
                                     x, rngs={"dropout": d_real_key}, mutable=["batch_stats"],
                                     **real_cond)[0]

            aux["d/r1"] = jax.lax.cond(batch["step"] % r1_every == 0,
                                       lambda: r1_penalty(d_apply, seen_real),
                                       lambda: jnp.zeros((), jnp.float32))
            loss = loss + 0.5 * r1_gamma * r1_every * aux["d/r1"]
        return loss, (d_vars.get("batch_stats", {}), aux)

    (d_loss, (d_batch_stats, d_aux)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state.d_params)
    d_updates, d_opt_state, d_params = optim.update(d_tx, d_grads, state.d_opt_state,
                                                    state.d_params)

    def d_under_update(x, cond):  # the updated D's logits and features of images x
        logits, d_vars = d_model.apply({"params": d_params, "batch_stats": d_batch_stats}, x,
                                       rngs={"dropout": g_key},
                                       mutable=["batch_stats", "intermediates"], **cond)
        return logits, d_vars.get("intermediates", {}).get("features", (None,))[0]

    fm = terms["feature_matching"]
    real_features = (jax.lax.stop_gradient(d_under_update(seen_real, real_cond)[1])
                     if fm else None)
    target = ((batch["moment_mean"], batch["moment_var"])
              if terms["moment_target"] == "dataset" else None)
    mean_weight, var_weight = (state.moment_weight if terms[k] == -1.0 else terms[k]
                               for k in ("moment_mean_weight", "moment_var_weight"))

    def terms_of(samples, features):  # G's loss terms beside the adversarial one
        moment, (mean_gap, var_gap) = losses.moment_loss(
            samples, images, mean_weight, var_weight, terms["moment_form"], target)
        aux = {"g/moment_loss": moment, "g/moment_mean_gap": mean_gap,
               "g/moment_var_gap": var_gap}
        total = moment
        if fm:
            aux["g/fm_loss"] = losses.feature_matching(features, real_features)
            total = total + fm * aux["g/fm_loss"]
        if terms["mmd"]:
            aux["g/mmd_loss"] = losses.pixel_mmd(samples, images)
            total = total + terms["mmd"] * aux["g/mmd_loss"]
        return total, aux

    def g_loss_parts(fake):  # (adversarial loss, the terms)
        logits, features = d_under_update(to_d(fake, g_aug_key), fake_cond)
        adv = losses.g_nonsaturating_loss(logits)
        term, aux = terms_of(fake, features)
        return jnp.stack([adv, term]), {"g/adv_loss": adv, **aux}

    diag = {}
    if terms["term_diagnostics"]:
        parts, parts_vjp, g_aux = jax.vjp(g_loss_parts, fake, has_aux=True)
        g_loss = parts.sum()
        # Two backward passes, one per part (a vmap over the two cotangents ran the DCGAN step
        # 5x slower on CPU than the plain step; two passes, measured, 1.3x).
        adv_grads, term_grads = (g_vjp(parts_vjp(jnp.eye(2, dtype=parts.dtype)[i])[0])[0]
                                 for i in (0, 1))
        g_grads = jax.tree.map(jnp.add, adv_grads, term_grads)
        adv_norm, term_norm = optax.tree.norm(adv_grads), optax.tree.norm(term_grads)
        diag = {"diag/grad_cos": optax.tree.vdot(adv_grads, term_grads)
                / jnp.maximum(adv_norm * term_norm, 1e-30),
                "diag/grad_norm_ratio": term_norm / jnp.maximum(adv_norm, 1e-30),
                "diag/adv_grad_norm": adv_norm, "diag/term_grad_norm": term_norm}
        real_b = batch["images_b"]
        floor, floor_aux = terms_of(real_b, jax.lax.stop_gradient(
            d_under_update(real_b, real_cond)[1]) if fm else None)
        diag.update({"diag/floor": floor, **{k.replace("g/", "diag/floor_"): v
                                             for k, v in floor_aux.items()}})
    else:
        def g_loss_fn(fake):
            parts, aux = g_loss_parts(fake)
            return parts.sum(), aux

        (g_loss, g_aux), d_fake = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
        (g_grads,) = g_vjp(d_fake)
    g_penalty, g_penalty_grads = jax.value_and_grad(optim.penalty)(state.g_params, g_opt)
    g_grads = jax.tree.map(jnp.add, g_grads, g_penalty_grads)
    g_updates, _, g_params = optim.update(g_tx, g_grads, state.g_opt_state, state.g_params)

    metrics = {"d/loss": d_loss, **d_aux, "g/loss": g_loss + g_penalty, **g_aux,
               "g/penalty": g_penalty, **diag,
               **_norms("d", d_grads, d_updates, d_params),
               **_norms("g", g_grads, g_updates, g_params)}
    bad, nonfinite = stability.bad_step(metrics, LOSSES, stab.max_loss)
    frozen = (state.skipped >= max_skipped_steps) | state.early_stop["stopped"]
    monitor, flags = stability.observe(state.monitor, metrics, WATCHED, stab, ~bad & ~frozen)

    def updated():  # G's step computed again, by the guard's own loops (guard_update)
        _, g_opt_state, g_params = optim.update(g_tx, g_grads, state.g_opt_state,
                                                state.g_params)
        g_ema_params = state.g_ema_params
        if g_ema_half_life:
            decay = optim.ema_decay(g_ema_half_life, images.shape[0],
                                    (state.step + 1) * images.shape[0], g_ema_rampup)
            g_ema_params = optim.ema_update(state.g_ema_params, g_params, decay)
        return state.replace(g_params=g_params, g_batch_stats=g_batch_stats,
                             g_opt_state=g_opt_state, d_params=d_params,
                             d_batch_stats=d_batch_stats, d_opt_state=d_opt_state,
                             g_ema_params=g_ema_params)

    new_state = stability.guard_update(~bad & ~frozen, updated, state)
    new_state = new_state.replace(step=state.step + 1, monitor=monitor,
                                  skipped=state.skipped + (bad & ~frozen).astype(jnp.int32))
    metrics.update(flags)
    metrics["monitor/d_saturated"] = stability.d_saturated(
        d_aux["d/acc_real"], d_aux["d/acc_fake"], stab.saturation)
    metrics["d/lr"] = optim.current_learning_rate(state.d_opt_state, d_opt, total_steps)
    metrics["g/lr"] = optim.current_learning_rate(state.g_opt_state, g_opt, total_steps)
    # G/D balance: D's loss against G's; far above 1, G is winning; far below, D is.
    metrics["balance/loss_ratio"] = d_loss / jnp.maximum(g_aux["g/adv_loss"], 1e-8)
    metrics["finite"] = (~nonfinite).astype(jnp.float32)
    metrics["bad"] = bad.astype(jnp.float32)
    metrics["skipped"] = new_state.skipped.astype(jnp.float32)
    return new_state, metrics


def _has_batch_norm(g_model) -> bool:
    return getattr(g_model, "norm", "none") == "batch"


def sampling_modes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The batch-norm modes that sample differently: both if G has batch norm, else one (the
    figures then show its samples under both names)."""
    return BN_MODES if config.model.norm == "batch" else BN_MODES[:1]


def to_mnist(images: jax.Array) -> jax.Array:
    """Samples as the evaluator and the figures take them: 28x28 (a 32x32 model's centre, MNIST
    having been padded by 2 pixels), within [-1, 1] (StyleGAN's output is linear)."""
    offset = (images.shape[1] - 28) // 2
    return jnp.clip(images[:, offset:offset + 28, offset:offset + 28], -1.0, 1.0)


def to_model_size(images: jax.Array, size: int) -> jax.Array:
    """Real images in [-1, 1] padded with background (-1) to the model's size."""
    pad = (size - images.shape[1]) // 2
    if not pad:
        return images
    return jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)


def sample(state: GANState, z: jax.Array, *, g_model, bn_mode: str,
           labels: jax.Array | None = None, noise_key: jax.Array | None = None) -> jax.Array:
    """G(z) (for `labels`, if G is conditional) as 28x28 images in [-1, 1], from G's moving
    average if the run keeps one, else from G. Batch norm on the batch's own statistics
    (`batch_stats`, the training mode) or on the moving averages (`moving_avg`, TF's inference
    mode, as the reference drew its figures); a G without batch norm samples the same either way,
    always in inference mode (no style mixing). `noise_key` draws the per-layer noise of a G that
    has it (none without a key)."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"unknown bn_mode {bn_mode!r}; choose one of {BN_MODES}")
    params = state.g_ema_params if jax.tree.leaves(state.g_ema_params) else state.g_params
    variables = {"params": params, "batch_stats": state.g_batch_stats}
    kwargs = {**_conditioning(labels), "rngs": {"noise": noise_key} if noise_key is not None
              else {}}
    if bn_mode == "batch_stats" and _has_batch_norm(g_model):
        images = g_model.apply(variables, z, train=True, mutable=["batch_stats"], **kwargs)[0]
    else:
        images = g_model.apply(variables, z, train=False, **kwargs)
    return to_mnist(images)


def generate(state: GANState, inputs: dict, *, g_model, bn_mode: str,
             batch_size: int) -> jax.Array:
    """Samples for many `inputs` (`fixed_inputs`: z, the labels asked for, a noise key), in
    batches of the training batch size (so that batch statistics are those G trains with);
    batch i draws its noise from `fold_in(noise_key, i)`."""
    z, labels = inputs["z"], inputs["labels"]
    n = z.shape[0] // batch_size

    def one(x):
        zb, lb, i = x
        return sample(state, zb, g_model=g_model, bn_mode=bn_mode, labels=lb,
                      noise_key=jax.random.fold_in(inputs["noise_key"], i))

    images = jax.lax.map(one, (z.reshape(n, batch_size, z.shape[-1]),
                               None if labels is None else labels.reshape(n, batch_size),
                               jnp.arange(n)))
    return images.reshape(-1, *images.shape[2:])


def eval_step(state: GANState, val: dict[str, jax.Array], inputs: dict, *, g_model, d_model,
              batch_size: int, real_label: float, classes: int, size: int
              ) -> dict[str, jax.Array]:
    """Validation metrics: D on held-out real images (with their labels if D is conditional;
    dropout off), and the per-pixel moment gaps between generated and held-out sets, with G
    sampled in both batch-norm modes (in batches of the training batch size, so batch statistics
    are those G trains with)."""
    real = data.to_float(val["images"])

    def d_logits(x):
        images, labels = x
        return d_model.apply({"params": state.d_params, "batch_stats": state.d_batch_stats},
                             to_model_size(images, size), deterministic=True,
                             mutable=["batch_stats"],
                             **_conditioning(labels if classes else None))[0]

    logits = jax.lax.map(d_logits, (real.reshape(-1, batch_size, *real.shape[1:]),
                                    val["labels"].astype(jnp.int32).reshape(-1, batch_size)))
    logits = logits.reshape(-1)
    metrics = {"d_loss_real": losses.sigmoid_ce(logits, real_label),
               "d_acc_real": (logits > 0).mean()}
    for mode in BN_MODES:
        if mode == BN_MODES[0] or _has_batch_norm(g_model):  # else the same samples again
            fake = generate(state, inputs, g_model=g_model, bn_mode=mode, batch_size=batch_size)
            mean_gap, var_gap = losses.moment_gaps(fake, real)
        metrics[f"{mode}/mean_gap"], metrics[f"{mode}/var_gap"] = mean_gap, var_gap
    return metrics


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The jitted functions of one GAN setup (`build`). In a sweep each takes and returns
    states stacked along a leading axis; data and z are shared by the members."""

    create: Callable  # (key, *, learning_rate, moment_weight) -> GANState
    step: Callable  # (state, batch) -> (state, metrics); the state is donated
    get_batch: Callable  # (dataset, perm, index, step) -> batch `index` of the order `perm`
    steps: Callable  # (state, dataset, perm, index, step, *, num_steps) -> (state, metrics)
    eval: Callable  # (state, val set, fixed inputs) -> validation metrics (`eval_step`)
    sample_uint8: dict[str, Callable]  # by batch-norm mode: (state, inputs) -> uint8 images
    generate: dict[str, Callable]  # by batch-norm mode: (state, inputs) -> images in [-1, 1]


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None,
          members: int = 0, total_steps: int = 0) -> Compiled:
    """The jitted functions of a run config's setup, built once per process and shared by every
    run of it (`static_config`). What comes back to the host (metrics, samples) is replicated,
    so every process can read it.

    `members=0`: they take one run's state. `members=N`: a sweep of N runs whose states are
    stacked along a leading axis (split over the mesh's `sweep` axis) and trained by
    `vmap(train_step)`, on one shared batch when the members share their data order, else on
    a batch per member (`loop.data_order_seed`).
    `total_steps` is the length of the learning-rate schedules that span the run (those with
    `decay_steps=0`; 0 for none).
    """
    return _build(config_lib.compiled_part(static_config(config)),
                  mesh or sharding.make_mesh(), members, total_steps)


@functools.cache
def _build(static: ml_collections.FrozenConfigDict, mesh, members: int,
           total_steps: int) -> Compiled:
    g_model, d_model = make_models(static)
    g_tx = optim.make_optimizer(static.g_optimizer, total_steps, where="g_optimizer")
    d_tx = optim.make_optimizer(static.d_optimizer, total_steps, where="d_optimizer")
    rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    member_batch = sharding.member_batch_sharded(mesh)
    state_sharding = sharding.member_sharded(mesh) if members else rep
    size, classes = image_size(static), num_classes(static)
    create = functools.partial(create_state, g_model=g_model, d_model=d_model, g_tx=g_tx,
                               d_tx=d_tx, g_opt=static.g_optimizer, d_opt=static.d_optimizer,
                               z_dim=static.z_dim,
                               image_shape=(size, size, image_channels(static)),
                               batch_size=static.batch_size, classes=classes,
                               g_ema=ema_half_life(static) > 0)
    step_fn = functools.partial(
        train_step, g_model=g_model, d_model=d_model, g_tx=g_tx, d_tx=d_tx, z_dim=static.z_dim,
        real_label=static.loss.real_label, fake_label=static.loss.fake_label,
        max_skipped_steps=static.max_skipped_steps, g_opt=static.g_optimizer,
        d_opt=static.d_optimizer, aug=static.augment, stab=static.stability,
        total_steps=total_steps, classes=classes, r1_gamma=static.loss.get("r1_gamma", 0.0),
        r1_every=static.loss.get("r1_every", 1), g_ema_half_life=ema_half_life(static),
        g_ema_rampup=static.get("g_ema_rampup", 0.0), terms=term_settings(static.loss))
    evaluate = functools.partial(eval_step, g_model=g_model, d_model=d_model,
                                 batch_size=static.batch_size, real_label=static.loss.real_label,
                                 classes=classes, size=size)
    sample_uint8 = {m: functools.partial(_sample_uint8, g_model=g_model, bn_mode=m)
                    for m in BN_MODES}
    gen = {m: functools.partial(generate, g_model=g_model, bn_mode=m,
                                batch_size=static.batch_size) for m in BN_MODES}
    own_batch_step = None
    if members:  # everything per member; the fixed z shared, the batch shared or per member
        create = jax.vmap(create)
        own_batch_step = jax.vmap(step_fn)
        step_fn = jax.vmap(step_fn, in_axes=(0, None))
        evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
        sample_uint8 = {m: jax.vmap(f, in_axes=(0, None)) for m, f in sample_uint8.items()}
        gen = {m: jax.vmap(f, in_axes=(0, None)) for m, f in gen.items()}

    terms = term_settings(static.loss)

    def one_batch(dataset, perm, index, step):
        def rows(index):
            return jax.lax.dynamic_slice_in_dim(perm, index * static.batch_size,
                                                static.batch_size)

        idx = rows(index)
        batch = {"images": to_model_size(data.to_float(dataset["images"][idx]), size),
                 "labels": dataset["labels"][idx].astype(jnp.int32),
                 "step": jnp.asarray(step, jnp.int32)}
        if terms["term_diagnostics"]:  # a second real batch, disjoint: half an epoch ahead
            batches = perm.shape[-1] // static.batch_size
            batch["images_b"] = to_model_size(data.to_float(
                dataset["images"][rows((index + batches // 2) % batches)]), size)
        if terms["moment_target"] == "dataset":
            batch["moment_mean"], batch["moment_var"] = dataset["pixel_mean"], dataset["pixel_var"]
        return batch

    def get_batch(dataset, perm, index, step=0):
        """Batch `index` of the epoch's order `perm` (`step`: the global step), gathered on
        device from the images and labels held there; each device gathers only the rows of its
        shard of the batch. A sweep's `perm` of shape (members, n) gives each member its own
        batch, stacked."""
        if perm.ndim == 2:
            batch, where = jax.vmap(one_batch, in_axes=(None, 0, None, None))(
                dataset, perm, index, step), member_batch
        else:
            batch, where = one_batch(dataset, perm, index, step), shard
        return {**batch, "images": jax.lax.with_sharding_constraint(batch["images"], where),
                "labels": jax.lax.with_sharding_constraint(batch["labels"], where)}

    def train_steps(state, dataset, perm, index, step, num_steps):
        """`num_steps` train steps in one dispatch, from batch `index` of the epoch's `perm`
        (global step `step`); metrics come back stacked, (num_steps,) each. One step is
        dispatched without a scan: on CPU, XLA runs the DCGAN step 7x slower inside a while
        loop (measured), while the small MLP GAN runs 2x faster with 50 steps per dispatch."""
        step_of = own_batch_step if perm.ndim == 2 else step_fn
        if num_steps == 1:
            state, metrics = step_of(state, get_batch(dataset, perm, index, step))
            return state, jax.tree.map(lambda x: x[None], metrics)
        return jax.lax.scan(
            lambda st, i: step_of(st, get_batch(dataset, perm, index + i, step + i)), state,
            jnp.arange(num_steps))

    return Compiled(
        create=jax.jit(create, out_shardings=state_sharding),
        step=jax.jit(step_fn, donate_argnums=0, out_shardings=(state_sharding, rep)),
        get_batch=jax.jit(get_batch),
        steps=jax.jit(train_steps, static_argnames="num_steps", donate_argnums=0,
                      out_shardings=(state_sharding, rep)),
        eval=jax.jit(evaluate, out_shardings=rep),
        sample_uint8={m: jax.jit(f, out_shardings=rep) for m, f in sample_uint8.items()},
        generate={m: jax.jit(f, out_shardings=rep) for m, f in gen.items()})


build.cache_clear = _build.cache_clear  # what benchmarks/levers.py calls between variants


def _sample_uint8(state: GANState, inputs: dict, *, g_model, bn_mode: str) -> jax.Array:
    """Figure samples (one batch) as uint8."""
    return data.to_uint8(sample(state, inputs["z"], g_model=g_model, bn_mode=bn_mode,
                                labels=inputs["labels"], noise_key=inputs["noise_key"]))


def static_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The part of a run config that shapes the compiled functions (not the run's own values)."""
    return config_lib.static_part(config, ("run", "epochs", "data_dir", "learning_rates",
                                           "moment_weights", "seeds", "sweep_mode", "mesh_sweep",
                                           "variants"))


def fixed_z(config: ml_collections.ConfigDict, n: int, stream: int) -> jax.Array:
    """z shared by every run and epoch of a study (controlled comparisons): a function of
    `sample_seed` alone. Stream 0 draws figure samples, stream 1 evaluation samples."""
    key = jax.random.fold_in(jax.random.PRNGKey(config.sample_seed), stream)
    return jax.random.uniform(key, (n, config.z_dim), minval=-1.0, maxval=1.0)


def fixed_inputs(config: ml_collections.ConfigDict, n: int, stream: int) -> dict:
    """What G is asked to draw, shared by every run and epoch: `fixed_z`, the digits
    0, 1, ..., 9, 0, 1, ... if G is conditional (so each digit gets a tenth), and the key of
    the per-layer noise."""
    return {"z": fixed_z(config, n, stream),
            "labels": jnp.arange(n, dtype=jnp.int32) % num_classes(config)
            if num_classes(config) else None,
            "noise_key": jax.random.fold_in(jax.random.PRNGKey(config.sample_seed), 100 + stream)}


@functools.cache
def eval_reference(data_dir: str, n: int) -> eval_metrics.Reference:
    """The evaluation reference: the first `n` MNIST test images (all 10,000 in the protocol)."""
    splits = data.mnist_splits(data_dir, 0)
    return eval_metrics.make_reference(data.to_float(jnp.asarray(splits.test_images[:n])),
                                       splits.test_labels[:n])


def pixel_moments(images: np.ndarray, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """The per-pixel mean and (population) variance of uint8 `images` over the whole set, as
    the model sees them (in [-1, 1], padded to its size): the fixed target of
    `loss.moment_target="dataset"`. Computed in float64, in chunks."""
    total = np.zeros(images.shape[1:], np.float64)
    squares = np.zeros_like(total)
    for start in range(0, len(images), 10000):
        x = images[start:start + 10000].astype(np.float64) / 127.5 - 1.0
        total += x.sum(0)
        squares += np.square(x).sum(0)
    mean = total / len(images)
    var = np.maximum(squares / len(images) - np.square(mean), 0.0)
    pad = (size - images.shape[1]) // 2
    if pad:  # the padding is background (-1) in every image
        mean = np.pad(mean, ((pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
        var = np.pad(var, ((pad, pad), (pad, pad), (0, 0)))
    return mean.astype(np.float32), var.astype(np.float32)


def write_bounds(workdir: str, config: ml_collections.ConfigDict) -> None:
    """The floor (MNIST training images), the ceiling (uniform noise) and a third anchor,
    moment-matched noise (independent pixels with the training images' per-pixel distribution:
    `metrics.moment_matched_noise`, the moment term's own optimum), of every eval metric, scored
    like a generator's samples, once per workdir, so a reader can place every number."""
    path = os.path.join(workdir, BOUNDS_FILE)
    if os.path.exists(path):
        return
    bounds = eval_bounds(config.data_dir, config.eval_reference, config.eval_samples,
                         bool(num_classes(config)))
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(bounds, f, indent=2)
    os.replace(path + ".tmp", path)


@functools.cache
def eval_bounds(data_dir: str, n_reference: int, n: int, conditional: bool) -> dict:
    """`write_bounds`'s figures: a function of the data and the protocol alone, so computed
    once per process (a process that trains several workdirs on one protocol, such as a test
    session, scores them once)."""
    reference = eval_reference(data_dir, n_reference)
    splits = data.mnist_splits(data_dir, 0)
    train = data.to_float(jnp.asarray(splits.train_images[:n]))
    noise = jax.random.uniform(jax.random.PRNGKey(0), (n, 28, 28, 1), minval=-1.0, maxval=1.0)
    # A conditional GAN's floor: the training images, each asked to be its own digit.
    labels = splits.train_labels[:n] if conditional else None
    uniform_labels = np.arange(n) % 10 if conditional else None
    moment_matched = data.to_float(jnp.asarray(
        eval_metrics.moment_matched_noise(splits.train_images[:n])))
    return {FLOOR: eval_metrics.evaluate(train, reference, labels=labels),
            CEILING: eval_metrics.evaluate(noise, reference, labels=uniform_labels),
            MOMENT_MATCHED: eval_metrics.evaluate(moment_matched, reference,
                                                  labels=uniform_labels),
            "samples": n, "reference": n_reference}


def evaluate_samples(fns, state: GANState, inputs: dict, config,
                     members: int = 0) -> list[dict[str, float]]:
    """The eval metrics of G's samples for `inputs` (`fixed_inputs`; with the conditional
    metrics if G is asked for digits), per run (`members` stacked runs, or one if 0), drawn in
    both batch-norm modes (one if G has no batch norm): `eval/...` with batch statistics,
    `eval_movavg/...` with moving averages."""
    reference = eval_reference(config.data_dir, config.eval_reference)
    modes = sampling_modes(config)
    labels = None if inputs["labels"] is None else np.asarray(inputs["labels"])
    out = [{} for _ in range(max(members, 1))]
    for mode in modes:
        images = fns.generate[mode](state, inputs)
        for i, metrics in enumerate(out):
            metrics.update(eval_metrics.evaluate(images[i] if members else images, reference,
                                                 EVAL_PREFIXES[mode], labels=labels))
    return out


def train_runs(configs: list[ml_collections.ConfigDict], workdir: str,
               mesh: jax.sharding.Mesh | None = None, sweep_mode: str = "auto") -> list[GANState]:
    """Trains (or resumes) runs that share one setup, each in `workdir/<run name>/`, and
    returns their final states (`loop.train_runs`).

    `sweep_mode="vmap"` trains the runs together as one sweep (`vmap` of the train step over
    their stacked states); runs resumed from different steps, and runs of variants that change
    the compiled setup (an activation, a schedule, a batch size), train as separate sweeps.
    `"sequential"` trains them one after another; `"auto"` picks by backend.
    """
    return loop.train_runs(GANRuns, configs, workdir, mesh, sweep_mode, static_config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: jax.sharding.Mesh | None = None) -> GANState:
    """Trains one run on its own (`config.run` names it and holds its learning rate, moment
    weight and seed); returns its final state."""
    return train_runs([config], workdir, mesh, sweep_mode="sequential")[0]


def restore(workdir: str, run: str, best: bool = False
            ) -> tuple[ml_collections.ConfigDict, Compiled, GANState]:
    """(run config, compiled functions, state) of a trained run (`grid.restore_run`)."""
    def init(fns, config, key):
        return fns.create(key, learning_rate=0.0, moment_weight=0.0)

    return grid.restore_run(workdir, run, build, init, best)


class GANRuns(loop.MnistRuns):
    """GAN runs as the loop trains them. At every epoch end: the validation metrics, the eval
    metrics every `eval_every_epochs`, and the fixed-z samples in both batch-norm modes."""

    progress_keys = ("d/loss", "g/adv_loss")

    def __init__(self, configs, workdir, mesh, members):
        super().__init__(configs, workdir, mesh, members)
        config, splits = self.config, self.splits
        # The compiled functions depend on the run's length only through schedules that span
        # it: otherwise a run continued for more epochs reuses them.
        spans = any(optim.spans_run(config[o]) for o in ("g_optimizer", "d_optimizer"))
        self.fns = build(config, mesh, members, self.total_steps if spans else 0)
        rep = sharding.replicated(mesh)
        train_set = {"images": splits.train_images, "labels": splits.train_labels}
        if term_settings(config.loss)["moment_target"] == "dataset":
            train_set["pixel_mean"], train_set["pixel_var"] = pixel_moments(
                splits.train_images, size=image_size(config))
        self.train_set = jax.device_put(train_set, rep)
        self.n_eval = (min(config.eval_examples, len(splits.val_images)) // config.batch_size
                       ) * config.batch_size
        self.val_set = jax.device_put({"images": splits.val_images[:self.n_eval],
                                       "labels": splits.val_labels[:self.n_eval]}, rep)
        self.eval_inputs = jax.device_put(fixed_inputs(config, self.n_eval, stream=1), rep)
        self.figure_inputs = jax.device_put(
            fixed_inputs(config, config.num_fixed_samples, stream=0), rep)
        # The evaluator's classifier is MNIST's: on other data only the moment gaps are scored.
        self.n_gen = ((config.eval_samples // config.batch_size) * config.batch_size
                      if data_format(config) == "mnist" else 0)
        self.generate_inputs = jax.device_put(fixed_inputs(config, self.n_gen, stream=2), rep)
        if self.n_gen and jax.process_index() == 0:
            write_bounds(workdir, config)

    def load_splits(self, config):
        return load_splits(config)

    def init_state(self):
        keys = [jax.random.fold_in(jax.random.PRNGKey(c.run.seed), 0) for c in self.configs]
        lrs = [c.run.learning_rate for c in self.configs]
        weights = [c.run.moment_weight for c in self.configs]
        if self.members:
            return self.fns.create(jnp.stack(keys), learning_rate=jnp.asarray(lrs),
                                   moment_weight=jnp.asarray(weights))
        return self.fns.create(keys[0], learning_rate=lrs[0], moment_weight=weights[0])

    def train(self, state, step, num_steps):
        perm, index = self.order(step)
        return self.fns.steps(state, self.train_set, perm, index, step, num_steps=num_steps)

    def _per_member(self, tree, i):
        return jax.tree.map(lambda x: x[i], tree) if self.members else tree

    def evaluate(self, state, step, full):
        n = len(self.configs)
        val = (jax.device_get(self.fns.eval(state, self.val_set, self.eval_inputs))
               if self.n_eval else {})
        evals = (evaluate_samples(self.fns, state, self.generate_inputs, self.config,
                                  self.members) if self.n_gen and full else None)
        return [self._per_member(val, i) for i in range(n)], evals

    def samples(self, state, step):
        samples = {mode: np.asarray(self.fns.sample_uint8[mode](state, self.figure_inputs))
                   for mode in sampling_modes(self.config)}
        samples.update({m: samples[BN_MODES[0]] for m in BN_MODES if m not in samples})
        return [self._per_member(samples, i) for i in range(len(self.configs))]

    def write_samples(self, i, step, samples):
        save_samples(self.run_dir(i), step, samples)

    def summary(self, train, val, evals):
        return (f"d/loss {train['d/loss']:.3f} g/adv_loss {train['g/adv_loss']:.3f} "
                f"g/moment_mean_gap {train['g/moment_mean_gap']:.1f} "
                f"g/moment_var_gap {train['g/moment_var_gap']:.1f}")

    def divergence_message(self, means, step):
        return _divergence_message(means, step, self.config)


def _divergence_message(means: dict[str, float], step: int, config) -> str:
    """Names the step and the cause: non-finite values (which), or losses above the limit."""
    if means["finite"] < 1:
        keys = sorted(k for k, v in means.items() if not np.isfinite(v))
        cause = f"non-finite {', '.join(keys) or 'losses or gradients'}"
    else:
        cause = (f"losses above stability.max_loss={config.stability.max_loss:g} "
                 f"(d/loss {means['d/loss']:.3g}, g/adv_loss {means['g/adv_loss']:.3g})")
    return (f"diverged: {int(means['skipped'])} bad steps by step {step}, {cause}; frozen at "
            "its last good state (its checkpoints hold it)")
