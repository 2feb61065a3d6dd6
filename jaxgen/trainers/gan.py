"""Two-player GAN training: the moment-stabilization study's trainer.

One pytree holds the whole two-player state (`g_`/`d_` names, one optimizer per player). The train
step is a pure function `(state, batch) -> (state, metrics)`: D is updated once, then G once with
the same z against the updated D. Per-step randomness is `fold_in(state.rng, state.step)` and the
data order a function of (seed, epoch), so a resumed run needs no saved RNG and is exact.

Per-run hyperparameters (learning rates, the moment weight) are data in the state, so one
compiled step serves every run of a study.
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

from jaxgen import checkpoint, data, losses, optim, sharding
from jaxgen.evaluator import metrics as eval_metrics
from jaxgen.log import MetricsLog
from jaxgen.models import dcgan, mlp_gan

# Sweep axes of a GAN study: (run field, config field listing its values, short name for folders).
SWEEP_AXES = (("learning_rate", "learning_rates", "lr"),
              ("moment_weight", "moment_weights", "moment"),
              ("seed", "seeds", "seed"))
BN_MODES = ("batch_stats", "moving_avg")  # how G normalizes when sampling
EVAL_PREFIXES = {"batch_stats": "eval/", "moving_avg": "eval_movavg/"}
BOUNDS_FILE = "eval_bounds.json"


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


ARCHITECTURES = {"dcgan": dcgan.make_models, "mlp": mlp_gan.make_models}


def make_models(config: ml_collections.ConfigDict):
    if config.model.arch not in ARCHITECTURES:
        raise ValueError(f"unknown GAN architecture {config.model.arch!r}; choose one of "
                         f"{sorted(ARCHITECTURES)}")
    return ARCHITECTURES[config.model.arch](config.model)


def create_state(key: jax.Array, *, g_model, d_model, g_tx, d_tx, z_dim: int, image_shape,
                 learning_rate: float | jax.Array, moment_weight: float | jax.Array) -> GANState:
    init_key, rng = jax.random.split(key)
    g_key, d_key, drop_key = jax.random.split(init_key, 3)
    g_vars = g_model.init(g_key, jnp.zeros((2, z_dim)), train=False)
    d_vars = d_model.init({"params": d_key, "dropout": drop_key}, jnp.zeros((2, *image_shape)))
    return GANState(
        step=jnp.zeros((), jnp.int32), rng=rng,
        g_params=g_vars["params"], g_batch_stats=g_vars.get("batch_stats", {}),
        g_opt_state=optim.init_optimizer(g_tx, g_vars["params"], learning_rate),
        d_params=d_vars["params"], d_batch_stats=d_vars.get("batch_stats", {}),
        d_opt_state=optim.init_optimizer(d_tx, d_vars["params"], learning_rate),
        moment_weight=jnp.asarray(moment_weight, jnp.float32))


def _norms(prefix: str, grads, updates, params) -> dict[str, jax.Array]:
    return {f"{prefix}/grad_norm": optax.tree.norm(grads),
            f"{prefix}/update_norm": optax.tree.norm(updates),
            f"{prefix}/param_norm": optax.tree.norm(params)}


def train_step(state: GANState, batch: jax.Array, *, g_model, d_model, g_tx, d_tx, z_dim: int,
               real_label: float, fake_label: float) -> tuple[GANState, dict[str, jax.Array]]:
    """One D update then one G update. `batch` is real images in [-1, 1], NHWC.

    Every forward pass in training mode updates that network's batch-norm moving averages, as
    TF's layers do when their update ops run with each optimizer step.
    """
    key = jax.random.fold_in(state.rng, state.step)
    z_key, d_real_key, d_fake_key, g_key = jax.random.split(key, 4)
    z = jax.random.uniform(z_key, (batch.shape[0], z_dim), minval=-1.0, maxval=1.0)

    fake, g_vars = g_model.apply({"params": state.g_params, "batch_stats": state.g_batch_stats},
                                 z, train=True, mutable=["batch_stats"])
    fake = jax.lax.stop_gradient(fake)

    def d_loss_fn(d_params):
        real_logits, d_vars = d_model.apply(
            {"params": d_params, "batch_stats": state.d_batch_stats}, batch,
            rngs={"dropout": d_real_key}, mutable=["batch_stats"])
        fake_logits, d_vars = d_model.apply(
            {"params": d_params, "batch_stats": d_vars["batch_stats"]}, fake,
            rngs={"dropout": d_fake_key}, mutable=["batch_stats"])
        loss_real, loss_fake = losses.d_loss(real_logits, fake_logits, real_label, fake_label)
        aux = {"d/loss_real": loss_real, "d/loss_fake": loss_fake,
               "d/acc_real": (real_logits > 0).mean(), "d/acc_fake": (fake_logits < 0).mean()}
        return loss_real + loss_fake, (d_vars.get("batch_stats", {}), aux)

    (d_loss, (d_batch_stats, d_aux)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state.d_params)
    d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
    d_params = optax.apply_updates(state.d_params, d_updates)

    def g_loss_fn(g_params):
        fake, new_g_vars = g_model.apply(
            {"params": g_params, "batch_stats": g_vars.get("batch_stats", {})}, z, train=True,
            mutable=["batch_stats"])
        # D's moving averages are bookkeeping only (it always normalizes with batch statistics).
        logits, _ = d_model.apply({"params": d_params, "batch_stats": d_batch_stats}, fake,
                                  rngs={"dropout": g_key}, mutable=["batch_stats"])
        adv = losses.g_nonsaturating_loss(logits)
        moment, (mean_gap, var_gap) = losses.moment_loss(fake, batch, state.moment_weight)
        aux = {"g/adv_loss": adv, "g/moment_loss": moment, "g/moment_mean_gap": mean_gap,
               "g/moment_var_gap": var_gap}
        return adv + moment, (new_g_vars.get("batch_stats", {}), aux)

    (g_loss, (g_batch_stats, g_aux)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        state.g_params)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)

    metrics = {"d/loss": d_loss, **d_aux, "g/loss": g_loss, **g_aux,
               **_norms("d", d_grads, d_updates, d_params),
               **_norms("g", g_grads, g_updates, g_params)}
    metrics["finite"] = jnp.all(jnp.isfinite(jnp.stack(list(metrics.values())))).astype(
        jnp.float32)
    new_state = state.replace(step=state.step + 1, g_params=g_params, g_batch_stats=g_batch_stats,
                              g_opt_state=g_opt_state, d_params=d_params,
                              d_batch_stats=d_batch_stats, d_opt_state=d_opt_state)
    return new_state, metrics


def sample(state: GANState, z: jax.Array, *, g_model, bn_mode: str) -> jax.Array:
    """G(z) with batch norm on the batch's own statistics (`batch_stats`, the training mode) or on
    the moving averages (`moving_avg`, TF's inference mode, as the reference drew its figures)."""
    variables = {"params": state.g_params, "batch_stats": state.g_batch_stats}
    if bn_mode == "moving_avg":
        return g_model.apply(variables, z, train=False)
    if bn_mode == "batch_stats":
        return g_model.apply(variables, z, train=True, mutable=["batch_stats"])[0]
    raise ValueError(f"unknown bn_mode {bn_mode!r}; choose one of {BN_MODES}")


def generate(state: GANState, z: jax.Array, *, g_model, bn_mode: str,
             batch_size: int) -> jax.Array:
    """Samples for many z, in batches of the training batch size (so that batch statistics are
    those G trains with)."""
    images = jax.lax.map(lambda zb: sample(state, zb, g_model=g_model, bn_mode=bn_mode),
                         z.reshape(-1, batch_size, z.shape[-1]))
    return images.reshape(-1, *images.shape[2:])


def eval_step(state: GANState, val_images: jax.Array, z: jax.Array, *, g_model, d_model,
              batch_size: int, real_label: float) -> dict[str, jax.Array]:
    """Validation metrics: D on held-out real images (dropout off), and the per-pixel moment gaps
    between generated and held-out sets, with G sampled in both batch-norm modes (in batches of
    the training batch size, so batch statistics are those G trains with)."""
    real = data.to_float(val_images)
    logits = jax.lax.map(
        lambda x: d_model.apply({"params": state.d_params, "batch_stats": state.d_batch_stats},
                                x, deterministic=True, mutable=["batch_stats"])[0],
        real.reshape(-1, batch_size, *real.shape[1:])).reshape(-1)
    metrics = {"d_loss_real": losses.sigmoid_ce(logits, real_label),
               "d_acc_real": (logits > 0).mean()}
    for mode in BN_MODES:
        fake = generate(state, z, g_model=g_model, bn_mode=mode, batch_size=batch_size)
        mean_gap, var_gap = losses.moment_gaps(fake, real)
        metrics[f"{mode}/mean_gap"], metrics[f"{mode}/var_gap"] = mean_gap, var_gap
    return metrics


@functools.cache
def _compiled(static: ml_collections.FrozenConfigDict, mesh) -> dict[str, Callable]:
    """Jitted functions of one experiment setup, built once per process and shared by its runs."""
    g_model, d_model = make_models(static)
    tx = optim.make_optimizer(static.optimizer)
    rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    create = functools.partial(create_state, g_model=g_model, d_model=d_model, g_tx=tx, d_tx=tx,
                               z_dim=static.z_dim, image_shape=(28, 28, 1))
    step = functools.partial(train_step, g_model=g_model, d_model=d_model, g_tx=tx, d_tx=tx,
                             z_dim=static.z_dim, real_label=static.loss.real_label,
                             fake_label=static.loss.fake_label)
    evaluate = functools.partial(eval_step, g_model=g_model, d_model=d_model,
                                 batch_size=static.batch_size, real_label=static.loss.real_label)

    def get_batch(images, perm, index):
        idx = jax.lax.dynamic_slice_in_dim(perm, index * static.batch_size, static.batch_size)
        return jax.lax.with_sharding_constraint(data.to_float(images[idx]), shard)

    def train_steps(state, images, perm, index, num_steps):
        """`num_steps` train steps in one dispatch, from batch `index` of the epoch's `perm`;
        metrics come back stacked, (num_steps,) each. One step is dispatched without a scan:
        on CPU, XLA runs the DCGAN step 7x slower inside a while loop (measured), while the
        small MLP GAN runs 2x faster with 50 steps per dispatch."""
        if num_steps == 1:
            state, metrics = step(state, get_batch(images, perm, index))
            return state, jax.tree.map(lambda x: x[None], metrics)
        return jax.lax.scan(lambda st, i: step(st, get_batch(images, perm, index + i)), state,
                            jnp.arange(num_steps))

    return {
        "create": jax.jit(create, out_shardings=rep),
        "step": jax.jit(step, donate_argnums=0, out_shardings=(rep, rep)),
        "get_batch": jax.jit(get_batch, out_shardings=shard),
        "steps": jax.jit(train_steps, static_argnames="num_steps", donate_argnums=0),
        "eval": jax.jit(evaluate),
        "sample_uint8": {m: jax.jit(lambda state, z, m=m: data.to_uint8(
            sample(state, z, g_model=g_model, bn_mode=m))) for m in BN_MODES},
        "generate": {m: jax.jit(functools.partial(generate, g_model=g_model, bn_mode=m,
                                                  batch_size=static.batch_size))
                     for m in BN_MODES},
    }


def static_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The part of a run config that shapes the compiled functions (not the run's own values)."""
    static = ml_collections.ConfigDict(config.to_dict())
    for field in ("run", "epochs", "data_dir", "learning_rates", "moment_weights", "seeds"):
        if field in static:
            del static[field]
    return ml_collections.FrozenConfigDict(static)


def fixed_z(config: ml_collections.ConfigDict, n: int, stream: int) -> jax.Array:
    """z shared by every run and epoch of a study (controlled comparisons): a function of
    `sample_seed` alone. Stream 0 draws figure samples, stream 1 evaluation samples."""
    key = jax.random.fold_in(jax.random.PRNGKey(config.sample_seed), stream)
    return jax.random.uniform(key, (n, config.z_dim), minval=-1.0, maxval=1.0)


@functools.cache
def _reference(data_dir: str, n: int) -> eval_metrics.Reference:
    """The evaluation reference: the first `n` MNIST test images (all 10,000 in the protocol)."""
    test = data.mnist_splits(data_dir, 0).test_images[:n]
    return eval_metrics.make_reference(data.to_float(jnp.asarray(test)))


def write_bounds(workdir: str, config: ml_collections.ConfigDict) -> None:
    """The floor (MNIST training images) and ceiling (uniform noise) of every eval metric, scored
    like a generator's samples, once per workdir, so a reader can place every number."""
    path = os.path.join(workdir, BOUNDS_FILE)
    if os.path.exists(path):
        return
    reference = _reference(config.data_dir, config.eval_reference)
    n = config.eval_samples
    train = data.to_float(jnp.asarray(data.mnist_splits(config.data_dir, 0).train_images[:n]))
    noise = jax.random.uniform(jax.random.PRNGKey(0), (n, 28, 28, 1), minval=-1.0, maxval=1.0)
    bounds = {"floor (MNIST train)": eval_metrics.evaluate(train, reference),
              "ceiling (uniform noise)": eval_metrics.evaluate(noise, reference),
              "samples": n, "reference": config.eval_reference}
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(bounds, f, indent=2)
    os.replace(path + ".tmp", path)


def save_samples(run_dir: str, epoch: int, samples: dict[str, np.ndarray]) -> None:
    folder = os.path.join(run_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"epoch_{epoch:04d}.npz")
    with open(path + ".tmp", "wb") as f:
        np.savez_compressed(f, **samples)
    os.replace(path + ".tmp", path)


def evaluate_samples(fns, state: GANState, z: jax.Array, config) -> dict[str, float]:
    """The eval metrics of G's samples for `z`, drawn in both batch-norm modes (one if G has
    no batch norm): `eval/...` with batch statistics, `eval_movavg/...` with moving averages."""
    reference = _reference(config.data_dir, config.eval_reference)
    modes = BN_MODES if jax.tree.leaves(state.g_batch_stats) else BN_MODES[:1]
    out = {}
    for mode in modes:
        images = fns["generate"][mode](state, z)
        out.update(eval_metrics.evaluate(images, reference, EVAL_PREFIXES[mode]))
    return out


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    """Means over the steps of several dispatches, each holding (steps,) arrays."""
    host = jax.device_get(pending)
    return {k: float(np.mean(np.concatenate([m[k] for m in host]))) for k in host[0]}


def _steps_to_boundary(done: int, steps_per_epoch: int, config) -> int:
    """Steps in the next dispatch: up to the next multiple of `steps_per_dispatch` within the
    epoch, stopping at the epoch's end and at every logging and checkpoint step. Boundaries are
    absolute step positions, so a resumed run dispatches the same chunks as a straight one."""
    index = done % steps_per_epoch
    limits = [config.steps_per_dispatch - index % config.steps_per_dispatch,
              steps_per_epoch - index, config.log_every_steps - done % config.log_every_steps]
    if config.checkpoint_every_steps:
        limits.append(config.checkpoint_every_steps - done % config.checkpoint_every_steps)
    return min(limits)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: jax.sharding.Mesh | None = None) -> GANState:
    """Trains one run (`config.run` names it and holds its learning rate, moment weight and
    seed) in `workdir/<run name>/`, resuming from its latest checkpoint; returns the final state.

    Logs train metrics every `log_every_steps`, and at every epoch end: validation metrics, the
    fixed-z samples in both batch-norm modes, and a checkpoint.
    """
    mesh = mesh or sharding.make_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    run = config.run
    run_dir = os.path.join(workdir, run.name)
    fns = _compiled(static_config(config), mesh)

    splits = data.mnist_splits(config.data_dir, config.val_examples, config.train_examples)
    spe = data.steps_per_epoch(len(splits.train_images), config.batch_size)
    total_steps = config.epochs * spe
    rep = sharding.replicated(mesh)
    train_images = jax.device_put(splits.train_images, rep)
    n_eval = (min(config.eval_examples, len(splits.val_images)) // config.batch_size
              ) * config.batch_size
    val_images = jax.device_put(splits.val_images[:n_eval], rep)
    eval_z = jax.device_put(fixed_z(config, n_eval, stream=1), rep)
    figure_z = jax.device_put(fixed_z(config, config.num_fixed_samples, stream=0), rep)
    n_gen = (config.eval_samples // config.batch_size) * config.batch_size
    generate_z = jax.device_put(fixed_z(config, n_gen, stream=2), rep)
    if n_gen:
        write_bounds(workdir, config)

    seed_key = jax.random.PRNGKey(run.seed)
    data_key = jax.random.fold_in(seed_key, 1)  # data order: a function of (seed, epoch)
    state = fns["create"](jax.random.fold_in(seed_key, 0), learning_rate=run.learning_rate,
                          moment_weight=run.moment_weight)
    manager = checkpoint.make_manager(os.path.join(run_dir, "checkpoints"),
                                      config.keep_checkpoints)
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state))
    state = restored if restored is not None else state
    start = int(state.step)
    if start >= total_steps:
        print(f"[{run.name}] finished ({start} steps); nothing to train.")
        manager.close()
        return state

    log = MetricsLog(workdir, run.name, tensorboard=config.tensorboard)
    log.write(start, "meta", {"steps_per_epoch": spe, "total_steps": total_steps,
                              "resumed": restored is not None})
    bar = tqdm(total=total_steps, initial=start, desc=run.name, unit="step", dynamic_ncols=True,
               disable=None)
    pending, perm, t0, done = [], None, time.perf_counter(), start
    while done < total_steps:
        epoch, index = divmod(done, spe)
        if perm is None or index == 0:
            perm = data.epoch_permutation(data_key, epoch, len(splits.train_images))
        num_steps = _steps_to_boundary(done, spe, config)
        state, metrics = fns["steps"](state, train_images, perm, index, num_steps=num_steps)
        pending.append(metrics)
        done += num_steps
        if done % config.log_every_steps == 0 or done % spe == 0:
            train = _mean_metrics(pending)
            pending = []
            log.write(done, "train", train, epoch=done / spe)
            bar.update(done - bar.n)
            bar.set_postfix({"epoch": f"{done / spe:.2f}", "d": f"{train['d/loss']:.3f}",
                             "g_adv": f"{train['g/adv_loss']:.3f}"}, refresh=False)
        if done % spe == 0:
            val = jax.device_get(fns["eval"](state, val_images, eval_z)) if n_eval else {}
            log.write(done, "val", val, epoch=done // spe)
            if n_gen and (done // spe % config.eval_every_epochs == 0 or done == total_steps):
                log.write(done, "eval", evaluate_samples(fns, state, generate_z, config),
                          epoch=done // spe)
            save_samples(run_dir, done // spe, {
                mode: np.asarray(fns["sample_uint8"][mode](state, figure_z))
                for mode in BN_MODES})
            checkpoint.save(manager, done, state)
            rate = (done - start) / (time.perf_counter() - t0)
            bar.write(f"[{run.name}] epoch {done // spe}/{config.epochs}: d/loss "
                      f"{train['d/loss']:.3f} g/adv_loss {train['g/adv_loss']:.3f} "
                      f"g/moment_mean_gap {train['g/moment_mean_gap']:.1f} "
                      f"g/moment_var_gap {train['g/moment_var_gap']:.1f} ({rate:.2f} steps/s)")
        elif config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0:
            checkpoint.save(manager, done, state)
    bar.close()
    manager.wait_until_finished()
    manager.close()
    log.close()
    return state
