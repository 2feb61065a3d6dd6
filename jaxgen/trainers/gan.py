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

import functools
import json
import os
import time
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxgen import augment, checkpoint, data, loop, losses, optim, sharding, stability
from jaxgen import config as config_lib
from jaxgen.errors import UserError
from jaxgen.evaluator import metrics as eval_metrics
from jaxgen.log import BN_MODES, BOUNDS_FILE, MetricsLog, read_metrics, save_samples
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


def resolve_data(config: ml_collections.ConfigDict) -> str:
    """The MNIST folder the runs read (checked)."""
    return data.check_mnist(config.data_dir)


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


def _repeat_ema(before, after, momentum: float):
    """Moving averages after a second update with the same batch statistics: from
    a1 = m a0 + (1 - m) x follows a2 = m a1 + (1 - m) x = a1 + m (a1 - a0)."""
    return jax.tree.map(lambda a0, a1: a1 + momentum * (a1 - a0), before, after)


def train_step(state: GANState, batch: dict[str, jax.Array], *, g_model, d_model, g_tx, d_tx,
               z_dim: int, real_label: float, fake_label: float, g_bn_momentum: float,
               max_skipped_steps: int, g_opt, d_opt, aug, stab, total_steps: int,
               classes: int = 0, r1_gamma: float = 0.0, r1_every: int = 1,
               g_ema_half_life: float = 0.0, g_ema_rampup: float = 0.0
               ) -> tuple[GANState, dict[str, jax.Array]]:
    """One D update then one G update. `batch`: `images`, real images in [-1, 1], NHWC, at the
    model's size; `labels`, their digits; `step`, the global step (shared by a sweep's members,
    so the lazy-R1 branch below is a real branch under `vmap`).

    G runs forward once: its output feeds D's update (gradient stopped) and, through the updated
    D, G's loss, whose gradient goes back through the saved forward pass (`jax.vjp`). The
    reference ran G forward twice with identical results (batch norm on batch statistics), each
    pass updating G's moving averages; the second update is applied here in closed form. D's
    passes update its moving averages (bookkeeping only: D always uses batch statistics).

    A conditional GAN (`classes` > 0) draws G's digits uniformly at random and shows D the real
    images with their labels, the fakes with theirs. Lazy R1 (StyleGAN2, section B): every
    `r1_every` steps D's loss adds `r1_gamma / 2 * r1_every * R1` on the real batch as D sees it.
    With `g_ema_half_life` > 0, G's parameter average follows every good step (`optim.ema_decay`).

    Stability switches (`g_opt`/`d_opt`: `jaxgen.optim`; `aug`: `jaxgen.augment`; `stab`:
    `jaxgen.stability`): L1/L2 penalties are added to each network's loss; augmentation
    transforms the real batch D sees (and G's samples, DiffAugment-style, if `aug.fake`), while
    the moment term compares G's samples with the batch as loaded. A bad step (non-finite, or a
    loss above `stab.max_loss`) changes nothing but `skipped`; once a run has skipped
    `max_skipped_steps` steps, or early stopping has stopped it, it is frozen.
    """
    images = batch["images"]
    key = jax.random.fold_in(state.rng, state.step)
    z_key, d_real_key, d_fake_key, g_key = jax.random.split(key, 4)
    # Augmentation, G's labels and G's noise draw from their own branches: switching one on
    # leaves the other streams as they were.
    real_aug_key, fake_aug_key, g_aug_key = jax.random.split(jax.random.fold_in(key, 1), 3)
    label_key, noise_key = jax.random.split(jax.random.fold_in(key, 2))
    z = jax.random.uniform(z_key, (images.shape[0], z_dim), minval=-1.0, maxval=1.0)
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
    g_batch_stats = _repeat_ema(state.g_batch_stats, g_batch_stats, g_bn_momentum)

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

    def g_loss_fn(fake):
        logits, _ = d_model.apply({"params": d_params, "batch_stats": d_batch_stats},
                                  to_d(fake, g_aug_key), rngs={"dropout": g_key},
                                  mutable=["batch_stats"], **fake_cond)
        adv = losses.g_nonsaturating_loss(logits)
        moment, (mean_gap, var_gap) = losses.moment_loss(fake, images, state.moment_weight)
        aux = {"g/adv_loss": adv, "g/moment_loss": moment, "g/moment_mean_gap": mean_gap,
               "g/moment_var_gap": var_gap}
        return adv + moment, aux

    (g_loss, g_aux), d_fake = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(d_fake)
    g_penalty, g_penalty_grads = jax.value_and_grad(optim.penalty)(state.g_params, g_opt)
    g_grads = jax.tree.map(jnp.add, g_grads, g_penalty_grads)
    g_updates, _, g_params = optim.update(g_tx, g_grads, state.g_opt_state, state.g_params)

    metrics = {"d/loss": d_loss, **d_aux, "g/loss": g_loss + g_penalty, **g_aux,
               "g/penalty": g_penalty,
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


@functools.cache
def _compiled(static: ml_collections.FrozenConfigDict, mesh, members: int,
              total_steps: int = 0) -> dict[str, Callable]:
    """Jitted functions of one experiment setup, built once per process and shared by its runs.
    What comes back to the host (metrics, samples) is replicated, so every process can read it.

    `members=0`: they take one run's state. `members=N`: a sweep of N runs whose states are
    stacked along a leading axis (split over the mesh's `sweep` axis) and trained by
    `vmap(train_step)` on one shared batch, so every member sees the same data stream.
    `total_steps` is the length of the learning-rate schedules that span the run (those with
    `decay_steps=0`).
    """
    g_model, d_model = make_models(static)
    g_tx = optim.make_optimizer(static.g_optimizer, total_steps, where="g_optimizer")
    d_tx = optim.make_optimizer(static.d_optimizer, total_steps, where="d_optimizer")
    rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    state_sharding = sharding.member_sharded(mesh) if members else rep
    size, classes = image_size(static), num_classes(static)
    create = functools.partial(create_state, g_model=g_model, d_model=d_model, g_tx=g_tx,
                               d_tx=d_tx, g_opt=static.g_optimizer, d_opt=static.d_optimizer,
                               z_dim=static.z_dim, image_shape=(size, size, 1),
                               batch_size=static.batch_size, classes=classes,
                               g_ema=ema_half_life(static) > 0)
    step_fn = functools.partial(
        train_step, g_model=g_model, d_model=d_model, g_tx=g_tx, d_tx=d_tx, z_dim=static.z_dim,
        real_label=static.loss.real_label, fake_label=static.loss.fake_label,
        g_bn_momentum=static.model.get("bn_momentum", 0.0) if static.model.norm == "batch"
        else 0.0, max_skipped_steps=static.max_skipped_steps, g_opt=static.g_optimizer,
        d_opt=static.d_optimizer, aug=static.augment, stab=static.stability,
        total_steps=total_steps, classes=classes, r1_gamma=static.loss.get("r1_gamma", 0.0),
        r1_every=static.loss.get("r1_every", 1), g_ema_half_life=ema_half_life(static),
        g_ema_rampup=static.get("g_ema_rampup", 0.0))
    evaluate = functools.partial(eval_step, g_model=g_model, d_model=d_model,
                                 batch_size=static.batch_size, real_label=static.loss.real_label,
                                 classes=classes, size=size)
    sample_uint8 = {m: functools.partial(_sample_uint8, g_model=g_model, bn_mode=m)
                    for m in BN_MODES}
    gen = {m: functools.partial(generate, g_model=g_model, bn_mode=m,
                                batch_size=static.batch_size) for m in BN_MODES}
    early_stop = functools.partial(stability.early_stop, patience=static.stability.patience,
                                   min_delta=static.stability.min_delta)
    if members:  # everything per member; data and z shared
        create = jax.vmap(create)
        step_fn = jax.vmap(step_fn, in_axes=(0, None))
        evaluate = jax.vmap(evaluate, in_axes=(0, None, None))
        sample_uint8 = {m: jax.vmap(f, in_axes=(0, None)) for m, f in sample_uint8.items()}
        gen = {m: jax.vmap(f, in_axes=(0, None)) for m, f in gen.items()}
        early_stop = jax.vmap(early_stop)

    def get_batch(dataset, perm, index, step=0):
        """Batch `index` of the epoch's order `perm` (`step`: the global step), gathered on
        device from the images and labels held there; each device gathers only the rows of its
        shard of the batch."""
        idx = jax.lax.dynamic_slice_in_dim(perm, index * static.batch_size, static.batch_size)
        images = to_model_size(data.to_float(dataset["images"][idx]), size)
        return {"images": jax.lax.with_sharding_constraint(images, shard),
                "labels": jax.lax.with_sharding_constraint(
                    dataset["labels"][idx].astype(jnp.int32), shard),
                "step": jnp.asarray(step, jnp.int32)}

    def train_steps(state, dataset, perm, index, step, num_steps):
        """`num_steps` train steps in one dispatch, from batch `index` of the epoch's `perm`
        (global step `step`); metrics come back stacked, (num_steps,) each. One step is
        dispatched without a scan: on CPU, XLA runs the DCGAN step 7x slower inside a while
        loop (measured), while the small MLP GAN runs 2x faster with 50 steps per dispatch."""
        if num_steps == 1:
            state, metrics = step_fn(state, get_batch(dataset, perm, index, step))
            return state, jax.tree.map(lambda x: x[None], metrics)
        return jax.lax.scan(
            lambda st, i: step_fn(st, get_batch(dataset, perm, index + i, step + i)), state,
            jnp.arange(num_steps))

    def take(state, i):
        return jax.tree.map(lambda x: x[i], state)

    def put(state, i, member):
        return jax.tree.map(lambda x, m: x.at[i].set(m), state, member)

    def stack(*states):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    def see_eval(state, values):
        """Early-stopping bookkeeping after an evaluation (`values`: one per member)."""
        es, improved = early_stop(state.early_stop, values, state.step)
        return state.replace(early_stop=es), improved

    return {
        "create": jax.jit(create, out_shardings=state_sharding),
        "step": jax.jit(step_fn, donate_argnums=0, out_shardings=(state_sharding, rep)),
        "get_batch": jax.jit(get_batch),
        "steps": jax.jit(train_steps, static_argnames="num_steps", donate_argnums=0,
                         out_shardings=(state_sharding, rep)),
        "eval": jax.jit(evaluate, out_shardings=rep),
        "sample_uint8": {m: jax.jit(f, out_shardings=rep) for m, f in sample_uint8.items()},
        "generate": {m: jax.jit(f, out_shardings=rep) for m, f in gen.items()},
        "take": jax.jit(take, out_shardings=rep),
        "put": jax.jit(put, out_shardings=state_sharding),
        "stack": jax.jit(stack, out_shardings=state_sharding),
        "see_eval": jax.jit(see_eval, out_shardings=(state_sharding, rep)),
        "status": jax.jit(lambda state: (state.skipped, state.early_stop["stopped"]),
                          out_shardings=rep),
    }


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


def write_bounds(workdir: str, config: ml_collections.ConfigDict) -> None:
    """The floor (MNIST training images) and ceiling (uniform noise) of every eval metric, scored
    like a generator's samples, once per workdir, so a reader can place every number."""
    path = os.path.join(workdir, BOUNDS_FILE)
    if os.path.exists(path):
        return
    reference = eval_reference(config.data_dir, config.eval_reference)
    n = config.eval_samples
    splits = data.mnist_splits(config.data_dir, 0)
    train = data.to_float(jnp.asarray(splits.train_images[:n]))
    noise = jax.random.uniform(jax.random.PRNGKey(0), (n, 28, 28, 1), minval=-1.0, maxval=1.0)
    # A conditional GAN's floor: the training images, each asked to be its own digit.
    labels = splits.train_labels[:n] if num_classes(config) else None
    bounds = {"floor (MNIST train)": eval_metrics.evaluate(train, reference, labels=labels),
              "ceiling (uniform noise)": eval_metrics.evaluate(
                  noise, reference, labels=None if labels is None else np.arange(n) % 10),
              "samples": n, "reference": config.eval_reference}
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(bounds, f, indent=2)
    os.replace(path + ".tmp", path)


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
        images = fns["generate"][mode](state, inputs)
        for i, metrics in enumerate(out):
            metrics.update(eval_metrics.evaluate(images[i] if members else images, reference,
                                                 EVAL_PREFIXES[mode], labels=labels))
    return out


def _steps_per_epoch(config) -> int:
    return data.steps_per_epoch(len(data.mnist_splits(
        config.data_dir, config.val_examples, config.train_examples).train_images),
        config.batch_size)


def _run_dir(workdir: str, config) -> str:
    return os.path.join(workdir, config.run.name)


def train_runs(configs: list[ml_collections.ConfigDict], workdir: str,
               mesh: jax.sharding.Mesh | None = None, sweep_mode: str = "auto") -> list[GANState]:
    """Trains (or resumes) runs that share one setup, each in `workdir/<run name>/`, and
    returns their final states.

    `sweep_mode="vmap"` trains the runs together as one sweep (`vmap` of the train step over
    their stacked states); runs resumed from different steps (one killed mid-save, or one added
    to the grid later), and runs of variants that change the compiled setup (an activation, a
    schedule, a batch size), train as separate sweeps, one per starting step and setup.
    `"sequential"` trains them one after another; `"auto"` picks by backend
    (`sharding.resolve_sweep_mode`). Either way each run's checkpoints, logs and samples are
    its own, so a workdir can be resumed in either mode.
    """
    chosen = sharding.resolve_sweep_mode(sweep_mode)
    if sweep_mode == "auto" and len(configs) > 1:
        print(f"sweep_mode=auto: {chosen} on {jax.default_backend()} "
              "(sharding.resolve_sweep_mode)")
    sweep_mode = chosen
    mesh = mesh or sharding.make_mesh()
    starts = {}
    for config in configs:
        manager = checkpoint.run_manager(workdir, config.run.name, config.keep_checkpoints)
        starts[config.run.name] = manager.latest_step() or 0
        manager.close()
    if sweep_mode == "sequential":
        groups = [[c] for c in configs]
    else:
        by_start = {}
        for config in configs:
            by_start.setdefault((starts[config.run.name], static_config(config)), []).append(
                config)
        groups = list(by_start.values())
    final = {}
    for group in groups:
        names = ", ".join(c.run.name for c in group)
        total = group[0].epochs * _steps_per_epoch(group[0])
        if starts[group[0].run.name] >= total:
            print(f"[{names}] finished ({total} steps); nothing to train.")
        group_mesh = mesh
        if sweep_mode == "vmap" and len(group) % mesh.shape["sweep"]:
            print(f"[{names}] {len(group)} runs do not fill the {mesh.shape['sweep']} rows of "
                  "the mesh; they train on a mesh with every device on the data axis.")
            group_mesh = sharding.make_mesh(1, mesh.devices.flatten().tolist())
        states = _train_group(group, workdir, group_mesh, vmapped=sweep_mode == "vmap")
        final.update(zip((c.run.name for c in group), states))
    return [final[c.run.name] for c in configs]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: jax.sharding.Mesh | None = None) -> GANState:
    """Trains one run on its own (`config.run` names it and holds its learning rate, moment
    weight and seed); returns its final state."""
    return train_runs([config], workdir, mesh, sweep_mode="sequential")[0]


def _train_group(configs: list[ml_collections.ConfigDict], workdir: str,
                 mesh: jax.sharding.Mesh, vmapped: bool) -> list[GANState]:
    """Trains runs that resume from the same step: stacked in one state if `vmapped`, else one.

    Logs train metrics every `log_every_steps`, and at every epoch end: validation metrics, the
    eval metrics every `eval_every_epochs`, the fixed-z samples in both batch-norm modes, and a
    checkpoint per run. A run that diverges (`max_skipped_steps` bad steps, or a non-finite eval
    metric) is frozen at its last good state, reported, and logged no further; so is a run that
    early stopping ends, with its best checkpoint restored. The others go on.
    """
    config, n = configs[0], len(configs)
    members = n if vmapped else 0
    if not vmapped and n != 1:
        raise ValueError("sequential training takes one run at a time")
    sharding.check_batch_size(config.batch_size, mesh)
    sharding.check_members(max(members, 1), mesh)
    splits = data.mnist_splits(config.data_dir, config.val_examples, config.train_examples)
    spe = data.steps_per_epoch(len(splits.train_images), config.batch_size)
    total_steps = config.epochs * spe
    # The compiled functions depend on the run's length only through schedules that span it:
    # otherwise a run continued for more epochs reuses them.
    spans = any(optim.spans_run(config[o]) for o in ("g_optimizer", "d_optimizer"))
    fns = _compiled(static_config(config), mesh, members, total_steps if spans else 0)
    is_main = jax.process_index() == 0
    es_metric = config.stability.early_stop_metric

    rep = sharding.replicated(mesh)
    train_set = jax.device_put({"images": splits.train_images, "labels": splits.train_labels}, rep)
    n_eval = (min(config.eval_examples, len(splits.val_images)) // config.batch_size
              ) * config.batch_size
    val_set = jax.device_put({"images": splits.val_images[:n_eval],
                              "labels": splits.val_labels[:n_eval]}, rep)
    eval_inputs = jax.device_put(fixed_inputs(config, n_eval, stream=1), rep)
    figure_inputs = jax.device_put(fixed_inputs(config, config.num_fixed_samples, stream=0), rep)
    n_gen = (config.eval_samples // config.batch_size) * config.batch_size
    generate_inputs = jax.device_put(fixed_inputs(config, n_gen, stream=2), rep)
    if n_gen and is_main:
        write_bounds(workdir, config)

    # The data order is a function of (data_seed, epoch), shared by every run of a study; a
    # run's seed draws its initialization and its z and dropout streams.
    data_key = jax.random.fold_in(jax.random.PRNGKey(config.data_seed), 1)
    keys = [jax.random.fold_in(jax.random.PRNGKey(c.run.seed), 0) for c in configs]
    lrs = [c.run.learning_rate for c in configs]
    weights = [c.run.moment_weight for c in configs]
    if vmapped:
        state = fns["create"](jnp.stack(keys), learning_rate=jnp.asarray(lrs),
                              moment_weight=jnp.asarray(weights))
    else:
        state = fns["create"](keys[0], learning_rate=lrs[0], moment_weight=weights[0])
    template = checkpoint.abstract_like(fns["take"](state, 0) if vmapped else state)
    managers = [checkpoint.run_manager(workdir, c.run.name, c.keep_checkpoints) for c in configs]
    best_managers = [checkpoint.run_manager(workdir, c.run.name, 1, best=True) if es_metric
                     else None for c in configs]
    start = managers[0].latest_step()
    if start is not None:  # every run of a group resumes from the same step
        restored = [checkpoint.restore(m, start, template) for m in managers]
        state = fns["stack"](*restored) if vmapped else restored[0]
    start = start or 0

    def member(i: int) -> GANState:
        return fns["take"](state, i) if vmapped else state

    def replace_member(i: int, new: GANState) -> GANState:
        return fns["put"](state, i, new) if vmapped else new

    def per_member(tree, i: int):
        return jax.tree.map(lambda x: x[i], tree) if vmapped else tree

    def save_all(step: int) -> None:
        for i, manager in enumerate(managers):
            if manager.latest_step() != step:
                checkpoint.save(manager, step, member(i))

    names = [c.run.name for c in configs]
    skipped, stopped = (np.atleast_1d(x) for x in jax.device_get(fns["status"](state)))
    ended = [bool(s >= config.max_skipped_steps or e) for s, e in zip(skipped, stopped)]
    if start >= total_steps or all(ended):
        for m in managers + best_managers:
            if m:
                m.close()
        return [member(i) for i in range(n)]

    logs = [MetricsLog(workdir, name, tensorboard=config.tensorboard) if is_main else None
            for name in names]
    for log in filter(None, logs):
        log.write(start, "meta", {"steps_per_epoch": spe, "total_steps": total_steps,
                                  "resumed": start > 0, "sweep_members": n if vmapped else 1})
    # Each run's evaluations so far (from the log, when resuming), for the collapse alerts.
    logged = read_metrics(workdir) if start else []
    history = {name: [r for r in logged if r["run"] == name and r["split"] == "eval"
                      and r["step"] <= start] for name in names}
    label = names[0] if n == 1 else f"sweep of {n}"
    bar = tqdm(total=total_steps, initial=start, desc=label, unit="step", dynamic_ncols=True,
               disable=None if is_main else True)

    def end_run(i: int, step: int, event: str, message: str) -> None:
        ended[i] = True
        bar.write(f"[{names[i]}] {message}")
        if logs[i]:
            logs[i].write(step, "event", {event: 1.0}, message=message)

    pending, perm, t0, done = [], None, time.perf_counter(), start
    while done < total_steps:
        epoch, index = divmod(done, spe)
        if perm is None or index == 0:
            perm = data.epoch_permutation(data_key, epoch, len(splits.train_images))
        num_steps = loop.steps_to_boundary(done, spe, config)
        state, metrics = fns["steps"](state, train_set, perm, index, done, num_steps=num_steps)
        for x in jax.tree.leaves(metrics):
            x.copy_to_host_async()  # fetched at the next log point without stalling
        pending.append(metrics)
        done += num_steps
        if done % config.log_every_steps == 0 or done % spe == 0:
            train = loop.member_means(pending, n)
            pending = []
            for i, (log, means) in enumerate(zip(logs, train)):
                if ended[i]:
                    continue
                if log:
                    log.write(done, "train", means, epoch=done / spe)
                if means["skipped"] >= config.max_skipped_steps:
                    end_run(i, done, "diverged", _divergence_message(means, done, config))
            bar.update(done - bar.n)
            bar.set_postfix({"epoch": f"{done / spe:.2f}", "d": f"{train[0]['d/loss']:.3f}",
                             "g_adv": f"{train[0]['g/adv_loss']:.3f}"}, refresh=False)
        if done % spe == 0:
            val = jax.device_get(fns["eval"](state, val_set, eval_inputs)) if n_eval else {}
            evals = (evaluate_samples(fns, state, generate_inputs, config, n if vmapped else 0)
                     if n_gen and (done // spe % config.eval_every_epochs == 0
                                   or done == total_steps) else None)
            samples = {mode: np.asarray(fns["sample_uint8"][mode](state, figure_inputs))
                       for mode in sampling_modes(config)}
            samples.update({m: samples[BN_MODES[0]] for m in BN_MODES if m not in samples})
            was_ended = list(ended)
            for i, log in enumerate(logs):
                if ended[i]:
                    continue
                if log:
                    log.write(done, "val", per_member(val, i), epoch=done // spe)
                    if evals is not None:
                        log.write(done, "eval", evals[i], epoch=done // spe)
                if evals is not None:
                    history[names[i]].append(evals[i])
                    alert = stability.collapse_alert(history[names[i]], config.stability)
                    if alert:
                        bar.write(f"[{names[i]}] ALERT at step {done}: {alert}")
                        if log:
                            log.write(done, "alert", {"mode_collapse": 1.0}, message=alert)
                    save_samples(_run_dir(workdir, configs[i]), done // spe,
                                 per_member(samples, i))
                bad = sorted(k for k, v in {**(evals[i] if evals else {}),
                                            **per_member(val, i)}.items()
                             if not np.isfinite(v))
                if bad:  # back to the last checkpoint, which the training since then spoiled
                    last = managers[i].latest_step()
                    if last is not None:
                        state = replace_member(i, checkpoint.restore(managers[i], last, template))
                    state = replace_member(i, member(i).replace(
                        skipped=jnp.asarray(config.max_skipped_steps, jnp.int32)))
                    end_run(i, done, "diverged",
                            f"diverged: non-finite {', '.join(bad)} at the evaluation of step "
                            f"{done}; frozen at its last checkpoint (step {last or 0})")
            if es_metric:
                state = _early_stopping(fns, state, evals, val, configs, best_managers, ended,
                                        done, template, end_run, vmapped)
            save_all(done)
            rate = (done - start) / (time.perf_counter() - t0)
            for i in range(n):
                if not was_ended[i]:
                    bar.write(f"[{names[i]}] epoch {done // spe}/{config.epochs}: d/loss "
                              f"{train[i]['d/loss']:.3f} g/adv_loss {train[i]['g/adv_loss']:.3f} "
                              f"g/moment_mean_gap {train[i]['g/moment_mean_gap']:.1f} "
                              f"g/moment_var_gap {train[i]['g/moment_var_gap']:.1f} "
                              f"({rate:.2f} steps/s)")
        elif config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0:
            save_all(done)
        if all(ended):
            save_all(done)
            break
    bar.close()
    for manager in managers + best_managers:
        if manager:
            manager.wait_until_finished()
            manager.close()
    for log in filter(None, logs):
        log.close()
    return [member(i) for i in range(n)]


def _early_stopping(fns, state, evals, val, configs, best_managers, ended, done, template,
                    end_run, vmapped) -> GANState:
    """Feeds this evaluation's `stability.early_stop_metric` to each run's bookkeeping, saves
    the best checkpoint of each run that improved, and restores it into each run that stopped.
    Epochs without the metric (no evaluation then) count neither way."""
    config = configs[0]
    metric = config.stability.early_stop_metric
    source = [evals[i] if evals else {} for i in range(len(configs))]
    if metric.startswith("val/"):
        source = [{f"val/{k}": float(np.asarray(v)[i] if vmapped else v) for k, v in val.items()}
                  for i in range(len(configs))]
    if metric not in source[0]:
        return state
    values = np.asarray([s[metric] for s in source], np.float32)
    state, improved = fns["see_eval"](state, values if vmapped else values[0])
    improved = np.atleast_1d(jax.device_get(improved))
    _, stopped = (np.atleast_1d(x) for x in jax.device_get(fns["status"](state)))
    for i, config in enumerate(configs):
        if ended[i]:
            continue
        current = fns["take"](state, i) if vmapped else state
        if improved[i]:
            checkpoint.save(best_managers[i], done, current)
            best_managers[i].wait_until_finished()
        if stopped[i]:
            best_step = best_managers[i].latest_step()
            if best_step is not None:
                best = checkpoint.restore(best_managers[i], best_step, template).replace(
                    early_stop=current.early_stop, step=current.step)
                state = fns["put"](state, i, best) if vmapped else best
            es = jax.device_get(current.early_stop)
            end_run(i, done, "early_stopped",
                    f"early stopped at step {done}: no {metric} improvement of more than "
                    f"{config.stability.min_delta:g} in {config.stability.patience} "
                    f"evaluations; the best, {float(es['best']):.4g} at step "
                    f"{int(es['best_step'])}, is restored")
    return state


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
