"""DDPM training from scratch on MNIST (Ho et al. 2020): jaxgen's UNet (`models/unet.py`) learns
to predict the noise, with the diffusion itself in `jaxgen/diffusion.py`.

The train step is a pure function `(state, batch, schedule) -> (state, metrics)`: per-step
randomness (timesteps, noise, dropout) is `fold_in(state.rng, state.step)` and the data order a
function of (data_seed, epoch), so a resumed run needs no saved RNG and is exact. The noise
schedule is data (a dict of arrays), and so is the learning rate (`optim`), so one compiled step
serves every run of a schedule x learning-rate study. An exponential moving average of the
parameters (`ema_half_life` in images, `ema_rampup`; `optim.ema_decay`) follows every good step
and is what samples and evaluations use.

At every epoch end: the validation loss (the simple objective at fixed timesteps and noise, of
the parameters and of their average), a checkpoint, and the fixed-key samples of both samplers
for the figures. Every `eval_every_epochs` and at the end: the variational bound in bits per
dimension on MNIST test images (`eval/bpd`, with its prior, decoder and KL terms) and the shared
evaluator's `eval/fd`, coverage, precision and recall of `eval_samples` samples.

Shared with the GANs: the optimizer chain (`optim`), Orbax checkpoints (`checkpoint`), the mesh
(`sharding`: the batch split over the `data` axis), the metrics log, the bad-step guard and spike
detectors (`stability`), early stopping on any `val/` or `eval/` metric, and the evaluator.
Runs of a grid train one after another (`sweep_mode="sequential"`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxgen import config as config_lib
from jaxgen import (
    data,
    diffusion,
    grid,
    log,
    loop,
    optim,
    sharding,
    stability,
)
from jaxgen.errors import UserError
from jaxgen.evaluator import metrics as eval_metrics
from jaxgen.models import unet
from jaxgen.trainers import gan

# Sweep axes of a diffusion study: (run field, config field listing its values, short name).
SWEEP_AXES = (("schedule", "schedules", "sched"),
              ("learning_rate", "learning_rates", "lr"),
              ("seed", "seeds", "seed"))
WATCHED = ("loss", "grad_norm")  # spike detectors
SAMPLERS = diffusion.SAMPLERS


@flax.struct.dataclass
class DiffusionState:
    step: jax.Array
    rng: jax.Array  # raw uint32[2] key of this run's training randomness
    params: dict
    opt_state: optax.OptState
    ema_params: dict  # moving average of params, used to sample and evaluate
    skipped: jax.Array  # bad steps skipped (non-finite or too large); frozen at the limit
    monitor: dict  # running statistics of the spike detectors (`stability.observe`)
    early_stop: dict  # best metric so far and patience used (`stability.early_stop`)


def resolve_data(config: ml_collections.ConfigDict) -> str:
    """The MNIST folder the runs read (checked, and its training split at least one batch)."""
    folder = data.check_mnist(config.data_dir)
    data.check_training_split(folder, config.val_examples, config.train_examples,
                              config.batch_size)
    return folder


def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses a run config that cannot train, before anything is written or compiled."""
    name = config.run.name
    optim.check_config(config.optimizer, "optimizer")
    try:
        unet.make_model(config.model)
        diffusion.make_schedule(config.run.schedule, config.diffusion.timesteps)
        for steps in (config.sampler.ddpm_steps, config.sampler.ddim_steps):
            diffusion.sampling_timesteps(config.diffusion.timesteps, steps)
    except ValueError as e:
        raise UserError(f"Run {name}: {e}. Fix: change that --config field.") from None
    if config.sweep_mode != "sequential":
        raise UserError(f"--config.sweep_mode={config.sweep_mode}: the diffusion trainer trains "
                        "a grid's runs one after another. Fix: --config.sweep_mode=sequential.")
    if config.sampler.eval not in SAMPLERS:
        raise UserError(f"--config.sampler.eval={config.sampler.eval} is not a sampler. Fix: "
                        f"choose one of {', '.join(SAMPLERS)}.")
    if not 1 <= config.bpd_terms < config.diffusion.timesteps:
        raise UserError(f"--config.bpd_terms={config.bpd_terms} must be in 1..T-1 (T = "
                        f"--config.diffusion.timesteps={config.diffusion.timesteps}). Fix: "
                        f"{config.diffusion.timesteps - 1} sums the bound exactly; fewer "
                        "estimate it from that many timesteps per image.")
    for field in ("eval_samples", "bpd_examples", "num_fixed_samples"):
        if config[field] % config.sample_batch:
            raise UserError(f"--config.{field}={config[field]} is not a multiple of "
                            f"--config.sample_batch={config.sample_batch} (they are drawn in "
                            "batches of it). Fix: round one of them.")
    if config.ema_half_life < 0 or config.ema_rampup < 0:
        raise UserError(f"--config.ema_half_life={config.ema_half_life} or --config.ema_rampup="
                        f"{config.ema_rampup} is negative. Fix: give the half-life of the "
                        "parameter average in images and its ramp-up (0: none).")


def create_state(key: jax.Array, *, model, tx, learning_rate: float | jax.Array) -> DiffusionState:
    init_key, rng = jax.random.split(key)
    params = model.init(init_key, jnp.zeros((1, 28, 28, 1)), jnp.zeros((1,), jnp.int32))["params"]
    return DiffusionState(
        step=jnp.zeros((), jnp.int32), rng=rng, params=params,
        opt_state=optim.init_optimizer(tx, params, learning_rate),
        ema_params=jax.tree.map(jnp.copy, params),  # its own buffers (the step donates both)
        skipped=jnp.zeros((), jnp.int32), monitor=stability.init_monitor(WATCHED),
        early_stop=stability.init_early_stop())


def eps_fn(model, params, train: bool = False, dropout_key: jax.Array | None = None
           ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The model as the diffusion functions take it: (x_t, t) -> predicted noise."""
    rngs = {"dropout": dropout_key} if train else {}
    return lambda x, t: model.apply({"params": params}, x, t, train=train, rngs=rngs)


def train_step(state: DiffusionState, batch: dict[str, jax.Array], sched: dict, *, model, tx,
               opt_cfg, stab, max_skipped_steps: int, total_steps: int, ema_half_life: float,
               ema_rampup: float) -> tuple[DiffusionState, dict[str, jax.Array]]:
    """One update on the simple objective; a non-finite step (or one with a loss above
    `stab.max_loss`) is skipped, and a run with `max_skipped_steps` of them is frozen."""
    images = batch["images"]
    loss_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))

    def loss_fn(params):
        mse = diffusion.loss(eps_fn(model, params, True, dropout_key), sched, images, loss_key)
        return mse + optim.penalty(params, opt_cfg), mse

    (total, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, _, params = optim.update(tx, grads, state.opt_state, state.params)
    decay = optim.ema_decay(ema_half_life, images.shape[0], (state.step + 1) * images.shape[0],
                            ema_rampup) if ema_half_life else 0.0

    metrics = {"loss": mse, "total_loss": total, "grad_norm": optax.tree.norm(grads),
               "update_norm": optax.tree.norm(updates), "param_norm": optax.tree.norm(params)}
    bad, nonfinite = stability.bad_step(metrics, ("loss",), stab.max_loss)
    frozen = (state.skipped >= max_skipped_steps) | state.early_stop["stopped"]
    monitor, flags = stability.observe(state.monitor, metrics, WATCHED, stab, ~bad & ~frozen)

    def updated():  # the step computed again, by the guard's own loops (guard_update)
        _, opt_state, params = optim.update(tx, grads, state.opt_state, state.params)
        return state.replace(params=params, opt_state=opt_state,
                             ema_params=optim.ema_update(state.ema_params, params, decay))

    new_state = stability.guard_update(~bad & ~frozen, updated, state)
    new_state = new_state.replace(step=state.step + 1, monitor=monitor,
                                  skipped=state.skipped + (bad & ~frozen).astype(jnp.int32))
    metrics.update(flags)
    metrics["lr"] = optim.current_learning_rate(state.opt_state, opt_cfg, total_steps)
    metrics["ema_decay"] = jnp.asarray(decay, jnp.float32)
    metrics["finite"] = (~nonfinite).astype(jnp.float32)
    metrics["bad"] = bad.astype(jnp.float32)
    metrics["skipped"] = new_state.skipped.astype(jnp.float32)
    return new_state, metrics


def _batched(fn, batch_size: int, *arrays):
    """`fn` over consecutive batches of `arrays` (leading sizes a multiple of `batch_size`) by
    `lax.map`, results concatenated."""
    n = arrays[0].shape[0] // batch_size
    out = jax.lax.map(lambda xs: fn(*xs), tuple(a.reshape(n, batch_size, *a.shape[1:])
                                                for a in arrays))
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)


def val_loss(params, images: jax.Array, t: jax.Array, noise: jax.Array, sched: dict, *,
             model, batch_size: int) -> jax.Array:
    """The simple objective of `params` on held-out images at fixed timesteps and noise (so
    evaluations are comparable)."""
    per_batch = lambda x, tt, nn: diffusion.loss_at(eps_fn(model, params), sched,
                                                    data.to_float(x), tt, nn)[None]
    return _batched(per_batch, batch_size, images, t, noise).mean()


def bits_per_dim(state: DiffusionState, images: jax.Array, key: jax.Array, sched: dict, *,
                 model, batch_size: int, terms: int) -> dict[str, jax.Array]:
    """Per-image terms of the variational bound in bits/dim (`diffusion.nll_bpd`) of 8-bit
    images under the parameter average; batch i draws from `fold_in(key, i)`."""
    n = images.shape[0] // batch_size
    fn = lambda x, i: diffusion.nll_bpd(eps_fn(model, state.ema_params), sched, data.to_float(x),
                                        jax.random.fold_in(key, i[0]), terms)
    return _batched(fn, batch_size, images, jnp.repeat(jnp.arange(n), batch_size))


def generate(state: DiffusionState, key: jax.Array, sched: dict, eta: jax.Array, *, model,
             n: int, batch_size: int, steps: int) -> jax.Array:
    """`n` samples of the parameter average in [-1, 1] over `steps` timesteps (`eta`: 1 DDPM,
    0 DDIM), in batches; batch i from `fold_in(key, i)`."""
    fn = lambda i: diffusion.sample(eps_fn(model, state.ema_params), sched,
                                    jax.random.fold_in(key, i), (batch_size, 28, 28, 1),
                                    steps=steps, eta=eta)
    return jax.lax.map(fn, jnp.arange(n // batch_size)).reshape(n, 28, 28, 1)


def static_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The part of a run config that shapes the compiled functions (not the run's own values:
    schedule, learning rate and seed are data)."""
    return config_lib.static_part(config, ("run", "epochs", "data_dir", "schedules",
                                           "learning_rates", "seeds", "sweep_mode", "mesh_sweep",
                                           "variants"))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The jitted functions of one DDPM setup (`build`)."""

    create: Callable  # (key, *, learning_rate) -> DiffusionState
    steps: Callable  # (state, dataset, perm, index, sched, *, num_steps) -> (state, metrics)
    val_loss: Callable  # (params, images, t, noise, sched) -> the simple loss at fixed t, noise
    bpd: Callable  # (state, images, key, sched) -> per-image bits/dim terms (`bits_per_dim`)
    sample: Callable  # (sampler name, state, key, sched, n) -> n samples in [-1, 1]


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None,
          total_steps: int = 0) -> Compiled:
    """The jitted functions of a run config's setup, built once per process and shared by its
    runs (every schedule and learning rate: `static_config`). Metrics and samples come back
    replicated. `total_steps`: the length of a schedule that spans the run (0 for none)."""
    return _build(config_lib.compiled_part(static_config(config)),
                  mesh or sharding.make_mesh(), total_steps)


@functools.cache
def _build(static: ml_collections.FrozenConfigDict, mesh, total_steps: int) -> Compiled:
    model = unet.make_model(static.model)
    tx = optim.make_optimizer(static.optimizer, total_steps, where="optimizer")
    rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step_fn = functools.partial(
        train_step, model=model, tx=tx, opt_cfg=static.optimizer, stab=static.stability,
        max_skipped_steps=static.max_skipped_steps, total_steps=total_steps,
        ema_half_life=static.ema_half_life, ema_rampup=static.ema_rampup)

    def get_batch(dataset, perm, index):
        idx = jax.lax.dynamic_slice_in_dim(perm, index * static.batch_size, static.batch_size)
        return {"images": jax.lax.with_sharding_constraint(
            data.to_float(dataset["images"][idx]), shard)}

    def train_steps(state, dataset, perm, index, sched, num_steps):
        """`num_steps` steps in one dispatch from batch `index` of the epoch's order `perm`."""
        if num_steps == 1:
            state, metrics = step_fn(state, get_batch(dataset, perm, index), sched)
            return state, jax.tree.map(lambda x: x[None], metrics)
        return jax.lax.scan(lambda st, i: step_fn(st, get_batch(dataset, perm, index + i), sched),
                            state, jnp.arange(num_steps))

    gen = jax.jit(functools.partial(generate, model=model, batch_size=static.sample_batch),
                  static_argnames=("n", "steps"), out_shardings=rep)

    def sample(name, state, key, sched, n):
        """`n` samples of the sampler `name` ("ddpm" or "ddim")."""
        return gen(state, key, sched, jnp.float32(SAMPLERS[name]), n=n,
                   steps=static.sampler[f"{name}_steps"])

    return Compiled(
        create=jax.jit(functools.partial(create_state, model=model, tx=tx), out_shardings=rep),
        steps=jax.jit(train_steps, static_argnames="num_steps", donate_argnums=0,
                      out_shardings=(rep, rep)),
        val_loss=jax.jit(functools.partial(val_loss, model=model,
                                           batch_size=static.sample_batch), out_shardings=rep),
        bpd=jax.jit(functools.partial(bits_per_dim, model=model, batch_size=static.sample_batch,
                                      terms=static.bpd_terms), out_shardings=rep),
        sample=sample)


def _fixed_key(config, stream: int) -> jax.Array:
    """Keys shared by every run and epoch of a study: 0 figure samples, 1 evaluation samples,
    2 the validation draw, 3 the bits/dim draw."""
    return jax.random.fold_in(jax.random.PRNGKey(config.sample_seed), stream)


def evaluate(fns, state, sched, config, test_images) -> dict[str, float]:
    """Bits/dim on the test images (mean, its standard error and its terms) and the evaluator's
    metrics of `eval_samples` samples of the evaluation sampler."""
    out = {}
    if config.bpd_examples:
        terms = jax.device_get(fns.bpd(state, test_images, _fixed_key(config, 3), sched))
        out["eval/bpd"] = float(terms["bpd"].mean())
        out["eval/bpd_se"] = float(terms["bpd"].std(ddof=1) / np.sqrt(len(terms["bpd"])))
        out.update({f"eval/bpd_{k}": float(terms[k].mean()) for k in ("prior", "decoder", "kl")})
    if config.eval_samples:
        images = fns.sample(config.sampler.eval, state, _fixed_key(config, 1), sched,
                            n=config.eval_samples)
        out.update(eval_metrics.evaluate(images, gan.eval_reference(config.data_dir,
                                                                    config.eval_reference)))
    return out


def train_runs(configs: list[ml_collections.ConfigDict], workdir: str,
               mesh: jax.sharding.Mesh | None = None, sweep_mode: str = "sequential"
               ) -> list[DiffusionState]:
    """Trains (or resumes) each run in `workdir/<run name>/`, one after another
    (`loop.train_runs`); returns their final states."""
    return loop.train_runs(DiffusionRuns, configs, workdir, mesh, "sequential")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: jax.sharding.Mesh | None = None) -> DiffusionState:
    """Trains one run (`config.run`: its schedule, learning rate and seed), resuming from its
    latest checkpoint; returns its final state."""
    return train_runs([config], workdir, mesh)[0]


class DiffusionRuns(loop.MnistRuns):
    """One DDPM run as the loop trains it. At every epoch end: the validation loss of the
    parameters and of their average, and the fixed-key samples of both samplers; every
    `eval_every_epochs` and at the end, bits/dim and the sample metrics (`evaluate`)."""

    progress_keys = ("loss",)

    def __init__(self, configs, workdir, mesh, members):
        super().__init__(configs, workdir, mesh, members)
        config, splits = self.config, self.splits
        self.fns = build(config, mesh,
                         self.total_steps if optim.spans_run(config.optimizer) else 0)
        rep = sharding.replicated(mesh)
        self.sched = jax.device_put(diffusion.make_schedule(config.run.schedule,
                                                            config.diffusion.timesteps), rep)
        self.train_set = jax.device_put({"images": splits.train_images}, rep)
        n_val = len(splits.val_images) // config.sample_batch * config.sample_batch
        val_key = _fixed_key(config, 2)
        self.val_inputs = jax.device_put((
            splits.val_images[:n_val],
            jax.random.randint(jax.random.fold_in(val_key, 0), (n_val,), 0,
                               config.diffusion.timesteps),
            jax.random.normal(jax.random.fold_in(val_key, 1), (n_val, 28, 28, 1))), rep)
        self.test_images = jax.device_put(splits.test_images[:config.bpd_examples], rep)
        if config.eval_samples and jax.process_index() == 0:
            gan.write_bounds(workdir, config)

    def init_state(self):
        config = self.config
        key = jax.random.fold_in(jax.random.PRNGKey(config.run.seed), 0)
        return self.fns.create(key, learning_rate=optim.run_learning_rate(
            config.optimizer, config.run.learning_rate, config.batch_size))

    def train(self, state, step, num_steps):
        perm, index = self.order(step)
        return self.fns.steps(state, self.train_set, perm, index, self.sched,
                              num_steps=num_steps)

    def evaluate(self, state, step, full):
        val = {k: float(self.fns.val_loss(params, *self.val_inputs, self.sched))
               for k, params in (("loss", state.params), ("loss_ema", state.ema_params))}
        evals = evaluate(self.fns, state, self.sched, self.config, self.test_images) \
            if full else None
        return [val], [evals] if evals else None

    def samples(self, state, step):
        return [{s: np.asarray(data.to_uint8(self.fns.sample(
            s, state, _fixed_key(self.config, 0), self.sched, n=self.config.num_fixed_samples)))
            for s in SAMPLERS}]

    def write_samples(self, i, step, samples):
        log.save_samples(self.run_dir(i), step, samples)

    def summary(self, train, val, evals):
        return (f"val/loss {val['loss']:.4f} (average {val['loss_ema']:.4f})"
                + "".join(f" {k} {evals[k]:.3f}" for k in ("eval/bpd", "eval/fd")
                          if k in evals))


def restore(workdir: str, run: str, best: bool = False
            ) -> tuple[ml_collections.ConfigDict, Compiled, DiffusionState]:
    """(run config, compiled functions, state) of a trained run (`grid.restore_run`)."""
    return grid.restore_run(workdir, run, build,
                            lambda fns, config, key: fns.create(key, learning_rate=0.0),
                            best)
