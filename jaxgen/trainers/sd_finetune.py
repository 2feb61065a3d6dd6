"""Stable Diffusion fine-tuning on image-caption pairs, through diffusers' Flax classes.

The pretrained pipeline (`config.pretrained`, a local folder in diffusers' layout; `jaxgen.sd`)
gives the UNet, the VAE, the CLIP text encoder and tokenizer, and the noise schedule
(`FlaxDDPMScheduler`). Only the UNet trains, on the usual denoising loss: latents z of an image,
noise eps, a timestep t uniform over the schedule's steps, and the mean squared error between
eps (or the velocity, for a v-prediction schedule) and the UNet's prediction from the noised
latents and the caption's text embeddings.

The frozen networks run as little as possible:
- Captions (and the sample prompts, and the empty prompt for classifier-free guidance) are
  encoded once per process; the embeddings stay on the host and each batch takes its rows.
- The VAE encodes the images once and keeps the moments (mean and standard deviation) of each
  image's latent distribution when nothing about an image changes between epochs (no random
  crop or flip); a latent is then drawn from them at every step, as if encoded anew. With random
  augmentation the VAE encodes each batch inside the train step instead. Validation images are
  centre-cropped and unflipped, so theirs are always cached.

Training: AdamW (`jaxgen.optim`: clipping, linear warmup then cosine decay over the rest of the
run, all from the config; unlike diffusers' own Flax script, the schedule is applied), optionally
an exponential moving average of the UNet's parameters, `bf16` as the compute dtype of the UNet
and VAE (the parameters and optimizer state stay fp32), data parallelism over the mesh's `data`
axis (batch split, state replicated; jit with shardings, no pmap), a step that is skipped when its
loss or gradients are not finite (`jaxgen.stability`). One step per dispatch: a step is heavy and
its batch is assembled on the host.

Exact resume: per-step randomness is `fold_in(state.rng, state.step)`; the data order is a
function of (data_seed, epoch) and the random crop and flip of (data_seed, step); logging,
evaluation and checkpoint steps are absolute. Orbax checkpoints hold the whole state.

Evaluation every `eval_every_steps` and at the end: the validation loss on held-out pairs, with
fixed timesteps (spread evenly over the schedule) and fixed noise, so evaluations compare; and
sample images for the fixed `sample_prompts` from fixed noise (DDIM, classifier-free guidance),
saved as `<run>/samples/step_XXXXXX.png` and `.npz`. Both use the moving average if there is
one. At the end the pipeline is saved to `<run>/pipeline/` in diffusers' layout with the
fine-tuned UNet (its moving average if there is one).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from collections.abc import Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from jaxgen import config as config_lib
from jaxgen import grid, image_folder, log, loop, optim, sd, sharding, stability
from jaxgen.errors import UserError

SWEEP_AXES = (("learning_rate", "learning_rates", "lr"), ("seed", "seeds", "seed"))
CROPS = ("center", "random")


@flax.struct.dataclass
class SDState:
    step: jax.Array
    rng: jax.Array  # raw key of this run's training randomness
    params: dict  # the UNet's, fp32
    opt_state: optax.OptState
    ema_params: dict  # moving average of params ({} unless ema_decay > 0)
    skipped: jax.Array  # non-finite steps skipped


# --- configuration and data --------------------------------------------------------------------

def check_config(config: ml_collections.ConfigDict) -> None:
    """Refuses a run config that cannot train, before anything is written or compiled."""
    optim.check_config(config.optimizer, "optimizer")
    sd.weights_are_pytorch(config.pretrained)  # a UserError unless it is a pipeline folder
    size = sd.training_resolution(config)
    if size <= 0 or size % 8:
        raise UserError(f"--config.resolution={config.resolution} is not a positive multiple of "
                        "8, as Stable Diffusion's pipeline needs. Fix: 0 (the pipeline's own "
                        "size, its VAE's sample_size), or e.g. 512 for SD 1.x.")
    # Sampling runs the prompts with and without their text (classifier-free guidance).
    batch = max(config.batch_size, 2 * len(config.sample_prompts))
    need, have = sd.attention_bytes(config.pretrained, size, batch), sd.available_memory()
    if need > have:
        raise UserError(
            f"At --config.resolution={size} the UNet's largest self-attention (every pixel of "
            f"its latents attending to every other, for {batch} latents at once) needs about "
            f"{need / 2**30:,.0f} GiB, more than the {have / 2**30:,.0f} GiB this device has. "
            f"Fix: lower --config.resolution (this pipeline's own is "
            f"{sd.native_resolution(config.pretrained)}, its VAE's sample_size; 0 chooses it), "
            "or --config.batch_size and the number of sample prompts.")
    if config.crop not in CROPS:
        raise UserError(f"--config.crop={config.crop} is unknown. Fix: use one of {CROPS}.")
    if not 0 <= config.ema_decay < 1:
        raise UserError(f"--config.ema_decay={config.ema_decay} is not in [0, 1). Fix: e.g. "
                        "0.9999, or 0 for no moving average.")
    if config.val_examples < 1:
        raise UserError(f"--config.val_examples={config.val_examples}: the validation loss needs "
                        "held-out pairs. Fix: hold out at least 1 (e.g. 4).")
    if not config.sample_prompts or config.num_inference_steps < 1:
        raise UserError("Sampling needs --config.sample_prompts (a tuple of captions) and "
                        "--config.num_inference_steps >= 1. Fix: set both.")
    if config.sweep_mode != "sequential":
        raise UserError(f"--config.sweep_mode={config.sweep_mode}: Stable Diffusion runs train "
                        "one after another. Fix: --config.sweep_mode=sequential.")


def resolve_data(config: ml_collections.ConfigDict) -> str:
    """The image folder (checked: `image_folder.read_image_folder`), as an absolute path."""
    folder = image_folder.read_image_folder(config.data_dir)
    if len(folder) < config.val_examples + config.batch_size:
        raise UserError(f"{folder.root} has {len(folder)} image-caption pairs, fewer than "
                        f"--config.val_examples={config.val_examples} held out plus one batch "
                        f"of --config.batch_size={config.batch_size}. Fix: add pairs, or lower "
                        "those fields.")
    return folder.root


def augments(config) -> bool:
    """Whether an image can differ between epochs (then the VAE encodes every batch)."""
    return config.crop == "random" or config.random_flip


@dataclasses.dataclass(frozen=True)
class Data:
    """A run's data, prepared once per process (`prepare_data`); host arrays."""
    folder: image_folder.ImageFolder
    train: np.ndarray  # indices into the folder
    val: np.ndarray
    caption_index: np.ndarray  # per folder entry, its row of `embeddings`
    embeddings: np.ndarray  # (unique captions, tokens, width), float32
    train_moments: tuple | None  # (mean, std) per train image, NCHW; None if augmented
    val_inputs: dict  # fixed latents, noise, timesteps and embeddings of the held-out pairs
    prompt_embeddings: np.ndarray  # (prompts, tokens, width)
    empty_embedding: np.ndarray  # (1, tokens, width): the empty prompt's, for guidance
    sample_noise: np.ndarray  # (prompts, C, h, w): the fixed starting latents of the samples


def split_indices(n: int, val_examples: int, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: a fixed shuffle of the folder by `data_seed`, the first
    `val_examples` held out."""
    order = np.random.default_rng((data_seed, 0)).permutation(n)
    return np.sort(order[val_examples:]), np.sort(order[:val_examples])


def epoch_order(train: np.ndarray, data_seed: int, epoch: int) -> np.ndarray:
    return train[np.random.default_rng((data_seed, 1, epoch)).permutation(len(train))]


def step_augmentation(config, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop offsets and flips of step `step`'s images: a function of (data_seed, step)."""
    rng = np.random.default_rng((config.data_seed, 2, step))
    offsets = rng.uniform(size=batch_size) if config.crop == "random" else np.full(batch_size, .5)
    flips = rng.uniform(size=batch_size) < 0.5 if config.random_flip else np.zeros(batch_size, bool)
    return offsets, flips


def tokenize(tokenizer, texts) -> np.ndarray:
    return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="np").input_ids


def _in_chunks(fn: Callable, x: np.ndarray, size: int) -> np.ndarray:
    """`fn` over `x` in chunks of `size` rows, the last padded (one compiled shape)."""
    pad = -len(x) % size
    padded = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    out = [jax.device_get(fn(padded[i:i + size])) for i in range(0, len(padded), size)]
    return jax.tree.map(lambda *a: np.concatenate(a)[:len(x)], *out)


@functools.cache
def pretrained(path: str, bf16: bool):
    """The pipeline (loaded once per process), its parameters, and the training scheduler."""
    pipeline, params = sd.load_pipeline(path, jnp.bfloat16 if bf16 else jnp.float32)
    return pipeline, params, sd.load_noise_scheduler(path), sd.load_sampler(path)


def prepare_data(static: ml_collections.FrozenConfigDict) -> Data:
    """Encodes every caption, prompt and held-out image once, and every train image too unless
    augmentation changes it between epochs."""
    return _prepare_data(static)


@functools.cache
def _prepare_data(static) -> Data:
    pipeline, params, _, _ = pretrained(static.pretrained, static.bf16)
    fns = frozen_fns(static.pretrained, static.bf16, static.fast_compile)
    folder = image_folder.read_image_folder(static.data_dir)
    train, val = split_indices(len(folder), static.val_examples, static.data_seed)
    captions = sorted(set(folder.captions))
    caption_index = np.asarray([captions.index(c) for c in folder.captions])
    texts = [*captions, *static.sample_prompts, ""]
    embeddings = _in_chunks(lambda ids: fns["encode_text"](params["text_encoder"], ids),
                            tokenize(pipeline.tokenizer, texts), static.batch_size)
    n = len(captions)

    def moments(indices):
        return _in_chunks(lambda i: fns["encode_images"](params["vae"], image_folder.batch_images(
            folder, i, sd.training_resolution(static))), np.asarray(indices), static.batch_size)

    val_mean, _ = moments(val)
    scheduler = pretrained(static.pretrained, static.bf16)[2][0]
    steps = scheduler.config.num_train_timesteps
    rng = np.random.default_rng((static.sample_seed, 0))
    latent_shape = val_mean.shape[1:]
    val_inputs = {
        # The mean latent: the held-out loss is a function of the UNet alone.
        "latents": val_mean * pipeline.vae.config.scaling_factor,
        "noise": rng.standard_normal(val_mean.shape).astype(np.float32),
        "timesteps": ((np.arange(len(val)) + 0.5) * steps / max(len(val), 1)).astype(np.int32),
        "embeddings": embeddings[caption_index[val]]}
    return Data(folder=folder, train=train, val=val, caption_index=caption_index,
                embeddings=embeddings[:n],
                train_moments=None if augments(static) else moments(train),
                val_inputs=val_inputs, prompt_embeddings=embeddings[n:-1],
                empty_embedding=embeddings[-1:],
                sample_noise=rng.standard_normal(
                    (len(static.sample_prompts), *latent_shape)).astype(np.float32))


def make_batch(data: Data, config, order: np.ndarray, step: int, spe: int) -> dict:
    """Step `step`'s batch (host arrays): the text embeddings of its captions, and its latent
    moments (cached) or its images (uint8 NHWC, cropped and flipped for this step)."""
    bs = config.batch_size
    rows = order[(step % spe) * bs:(step % spe + 1) * bs]
    batch = {"embeddings": data.embeddings[data.caption_index[rows]]}
    if data.train_moments is None:
        offsets, flips = step_augmentation(config, step, bs)
        batch["pixels"] = image_folder.batch_images(
            data.folder, rows, sd.training_resolution(config), offsets, flips)
    else:
        where = np.searchsorted(data.train, rows)
        batch["latent_mean"], batch["latent_std"] = (m[where] for m in data.train_moments)
    return batch


def put_batch(batch: dict, mesh) -> dict:
    """Host arrays (the same on every process) as global arrays split over the `data` axis."""
    shard = sharding.batch_sharded(mesh)
    return {k: jax.make_array_from_callback(v.shape, shard, lambda i, v=v: v[i])
            for k, v in batch.items()}


# --- the networks ------------------------------------------------------------------------------

def encode_images(vae, vae_params, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """uint8 NHWC images -> the mean and standard deviation of their latent distributions,
    NCHW (the UNet's layout), unscaled."""
    x = jnp.transpose(pixels.astype(jnp.float32) / 127.5 - 1.0, (0, 3, 1, 2))
    dist = vae.apply({"params": vae_params}, x, method=vae.encode).latent_dist
    to_nchw = lambda a: jnp.transpose(a, (0, 3, 1, 2)).astype(jnp.float32)
    return to_nchw(dist.mean), to_nchw(dist.std)


def denoising_loss(params, latents, noise, timesteps, embeddings, *, unet, scheduler,
                   scheduler_state) -> jax.Array:
    """Per-example mean squared error of the UNet's prediction of the noise (or of the velocity,
    Salimans & Ho 2022, for a v-prediction schedule) from the noised latents; fp32."""
    noisy = scheduler.add_noise(scheduler_state, latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(scheduler_state, latents, noise, timesteps)
    else:
        target = noise
    pred = unet.apply({"params": params}, noisy, timesteps, embeddings).sample
    return jnp.square(pred.astype(jnp.float32) - target).reshape(len(latents), -1).mean(1)


def create_state(key: jax.Array, unet_params, *, tx, opt_cfg, learning_rate, batch_size: int,
                 ema: bool) -> SDState:
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), unet_params)
    return SDState(step=jnp.zeros((), jnp.int32), rng=key, params=params,
                   opt_state=optim.init_optimizer(
                       tx, params, optim.run_learning_rate(opt_cfg, learning_rate, batch_size)),
                   ema_params=params if ema else {}, skipped=jnp.zeros((), jnp.int32))


def train_step(state: SDState, batch: dict, vae_params, *, unet, vae, tx, scheduler,
               scheduler_state, opt_cfg, total_steps: int, ema_decay: float,
               max_skipped_steps: int) -> tuple[SDState, dict[str, jax.Array]]:
    """One UNet update on `batch` (`make_batch`): latents drawn from the cached moments or from
    the VAE's encoding of the batch's pixels, scaled by the VAE's scaling factor; then noise and
    timesteps from `fold_in(state.rng, state.step)`. A step whose loss or gradients are not
    finite changes nothing but `skipped`; after `max_skipped_steps` the run is frozen."""
    key = jax.random.fold_in(state.rng, state.step)
    latent_key, noise_key, t_key = jax.random.split(key, 3)
    if "pixels" in batch:
        mean, std = encode_images(vae, vae_params, batch["pixels"])
    else:
        mean, std = batch["latent_mean"], batch["latent_std"]
    latents = (mean + std * jax.random.normal(latent_key, mean.shape)) * vae.config.scaling_factor
    noise = jax.random.normal(noise_key, latents.shape)
    timesteps = jax.random.randint(t_key, (len(latents),), 0,
                                   scheduler.config.num_train_timesteps)

    def loss_fn(params):
        return denoising_loss(params, latents, noise, timesteps, batch["embeddings"], unet=unet,
                              scheduler=scheduler, scheduler_state=scheduler_state).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    # The gradient norm only: each norm is a reduction per parameter array, and the update
    # and parameter norms would add a third to the step's compile time on CPU (measured).
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    bad, _ = stability.bad_step(metrics, ("loss",), 0.0)
    good = ~bad & (state.skipped < max_skipped_steps)

    def updated():
        _, opt_state, params = optim.update(tx, grads, state.opt_state, state.params)
        ema_params = state.ema_params
        if ema_decay:  # with diffusers' EMAModel warmup: short runs are not held at the start
            decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
            ema_params = optim.ema_update(state.ema_params, params, decay)
        return state.replace(params=params, opt_state=opt_state, ema_params=ema_params)

    new = stability.guard_update(good, updated, state)
    new = new.replace(step=state.step + 1, skipped=state.skipped + bad.astype(jnp.int32))
    metrics["lr"] = optim.current_learning_rate(state.opt_state, opt_cfg, total_steps)
    metrics["finite"] = (~bad).astype(jnp.float32)
    metrics["skipped"] = new.skipped.astype(jnp.float32)
    return new, metrics


def eval_params(state: SDState) -> dict:
    """The parameters that evaluate, sample and are saved: the moving average if kept."""
    return state.ema_params if jax.tree.leaves(state.ema_params) else state.params


def val_loss(params, inputs: dict, *, unet, scheduler, scheduler_state,
             batch_size: int) -> jax.Array:
    """The mean denoising loss over the held-out pairs at their fixed timesteps and noise."""
    def one(x):
        return denoising_loss(params, x["latents"][None], x["noise"][None],
                              x["timesteps"][None], x["embeddings"][None], unet=unet,
                              scheduler=scheduler, scheduler_state=scheduler_state)[0]

    return jax.lax.map(one, inputs, batch_size=batch_size).mean()


def sample(params, vae_params, prompt_embeddings, empty_embedding, noise, *, unet, vae, sampler,
           sampler_state, num_steps: int, guidance_scale: float) -> jax.Array:
    """uint8 NHWC images for the prompts from the starting latents `noise` (NCHW): DDIM over
    `num_steps` steps with classifier-free guidance (the UNet sees the batch with the empty
    prompt and with the prompts at once), decoded by the VAE."""
    context = jnp.concatenate([jnp.broadcast_to(empty_embedding, prompt_embeddings.shape),
                               prompt_embeddings])
    state = sampler.set_timesteps(sampler_state, num_steps, noise.shape)

    def body(i, carry):
        latents, state = carry
        t = state.timesteps[i]
        x = sampler.scale_model_input(state, jnp.concatenate([latents, latents]), t)
        eps = unet.apply({"params": params}, x, jnp.broadcast_to(t, (len(x),)), context).sample
        uncond, cond = jnp.split(eps.astype(jnp.float32), 2)
        eps = uncond + guidance_scale * (cond - uncond)
        return sampler.step(state, eps, t, latents).to_tuple()

    latents, _ = jax.lax.fori_loop(0, num_steps, body, (noise * state.init_noise_sigma, state))
    latents = jnp.transpose(latents / vae.config.scaling_factor, (0, 2, 3, 1))
    images = vae.apply({"params": vae_params}, latents, method=vae.decode).sample
    images = jnp.transpose(images.astype(jnp.float32), (0, 2, 3, 1))
    return jnp.round(jnp.clip(images / 2 + 0.5, 0, 1) * 255).astype(jnp.uint8)


def _jit(fast_compile: bool) -> Callable:
    """`jax.jit`, with XLA's backend optimizations off if `fast_compile`: at tiny scale on CPU
    compiling dominates (the tiny train step compiles in 6 s instead of 13 s, and runs about 5%
    slower; measured)."""
    options = {"xla_backend_optimization_level": 0} if fast_compile else None
    return functools.partial(jax.jit, compiler_options=options)


@functools.cache
def frozen_fns(path: str, bf16: bool, fast_compile: bool) -> dict[str, Callable]:
    """The jitted text and image encoders (run once per caption and cached image)."""
    pipeline, jit = pretrained(path, bf16)[0], _jit(fast_compile)
    return {"encode_text": jit(lambda p, ids: pipeline.text_encoder(ids, params=p)[0]),
            "encode_images": jit(functools.partial(encode_images, pipeline.vae))}


def static_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
    """The part of a run config that shapes the compiled functions and the data (not the run's
    learning rate, seed or length, nor its bookkeeping)."""
    return config_lib.static_part(config, (
        "run", "epochs", "learning_rates", "seeds", "sweep_mode", "mesh_sweep", "variants",
        "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
        "tensorboard", "exp"))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """The jitted functions of one fine-tuning setup (`build`)."""

    create: Callable  # (key, unet_params, *, learning_rate) -> SDState
    step: Callable  # (state, batch, vae_params) -> (state, metrics); the state is donated
    val_loss: Callable  # (state, val inputs) -> the held-out loss at fixed t and noise
    sample: Callable  # (state, vae_params, prompt emb., empty emb., noise) -> uint8 images


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None,
          total_steps: int = 0) -> Compiled:
    """The jitted functions of a run config's setup (`static_config`), shared by its runs.
    `total_steps`: the length of a schedule that spans the run (0 if it has its own length)."""
    return _build(static_config(config), mesh or sharding.make_mesh(), total_steps)


@functools.cache
def _build(static: ml_collections.FrozenConfigDict, mesh, total_steps: int) -> Compiled:
    pipeline, _, (scheduler, scheduler_state), (sampler, sampler_state) = pretrained(
        static.pretrained, static.bf16)
    tx = optim.make_optimizer(static.optimizer, total_steps, where="optimizer")
    rep, jit = sharding.replicated(mesh), _jit(static.fast_compile)
    step = functools.partial(
        train_step, unet=pipeline.unet, vae=pipeline.vae, tx=tx, scheduler=scheduler,
        scheduler_state=scheduler_state, opt_cfg=static.optimizer, total_steps=total_steps,
        ema_decay=static.ema_decay, max_skipped_steps=static.max_skipped_steps)
    create = functools.partial(create_state, tx=tx, opt_cfg=static.optimizer,
                               batch_size=static.batch_size, ema=static.ema_decay > 0)
    evaluate = functools.partial(val_loss, unet=pipeline.unet, scheduler=scheduler,
                                 scheduler_state=scheduler_state, batch_size=static.batch_size)
    draw = functools.partial(sample, unet=pipeline.unet, vae=pipeline.vae, sampler=sampler,
                             sampler_state=sampler_state,
                             num_steps=static.num_inference_steps,
                             guidance_scale=static.guidance_scale)
    return Compiled(
        create=jit(create, out_shardings=rep),
        step=jit(step, donate_argnums=0, out_shardings=(rep, rep)),
        val_loss=jit(lambda state, inputs: evaluate(eval_params(state), inputs),
                     out_shardings=rep),
        sample=jit(lambda state, vae_params, *a: draw(eval_params(state), vae_params, *a),
                   out_shardings=rep))


def restore(workdir: str, run: str, best: bool = False
            ) -> tuple[ml_collections.ConfigDict, Compiled, SDState]:
    """(run config, compiled functions, state) of a fine-tuning run (`grid.restore_run`), its
    state's structure that of the pretrained UNet's."""
    def init(fns, config, key):
        unet = pretrained(config.pretrained, config.bf16)[1]["unet"]
        return fns.create(key, unet, learning_rate=0.0)

    return grid.restore_run(workdir, run, build, init, best)


# --- the training loop -------------------------------------------------------------------------

def train_runs(configs: list[ml_collections.ConfigDict], workdir: str,
               mesh: jax.sharding.Mesh | None = None, sweep_mode: str = "sequential"
               ) -> list[SDState]:
    """Trains (or resumes) each run in `workdir/<run name>/`, one after another
    (`loop.train_runs`)."""
    if sweep_mode != "sequential":
        raise UserError(f"--config.sweep_mode={sweep_mode}: Stable Diffusion runs train one "
                        "after another. Fix: --config.sweep_mode=sequential.")
    return loop.train_runs(SDRuns, configs, workdir, mesh, "sequential")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: jax.sharding.Mesh | None = None) -> SDState:
    """Trains one run (`config.run` holds its learning rate and seed) from its last checkpoint
    or from the pretrained UNet; logs, evaluates, samples and checkpoints on the way; saves the
    fine-tuned pipeline at the end. Returns the final state."""
    return train_runs([config], workdir, mesh)[0]


class SDRuns(loop.Runs):
    """One fine-tuning run as the loop trains it: a host-assembled batch per step; every
    `eval_every_steps` and at the end, the validation loss and the prompts' samples; the
    pipeline saved once the run is complete."""

    progress_keys = ("loss",)
    eval_at_epoch_ends = False

    def __init__(self, configs, workdir, mesh, members):
        super().__init__(configs, workdir, mesh, members)
        config = self.config
        self.static = static_config(config)
        self.pipeline, self.params, _, _ = pretrained(config.pretrained, config.bf16)
        self.data = prepare_data(self.static)
        self.steps_per_epoch = len(self.data.train) // config.batch_size
        self.total_steps = config.epochs * self.steps_per_epoch
        self.fns = build(config, mesh,
                         self.total_steps if optim.spans_run(config.optimizer) else 0)
        rep = sharding.replicated(mesh)
        self.vae_params = jax.device_put(self.params["vae"], rep)
        self.val_inputs = jax.device_put(self.data.val_inputs, rep)
        self.sample_inputs = jax.device_put((self.data.prompt_embeddings,
                                             self.data.empty_embedding, self.data.sample_noise),
                                            rep)
        self._order = (None, None)  # (epoch, its order)

    @property
    def meta(self):
        return {"train_examples": len(self.data.train), "val_examples": len(self.data.val),
                "unet_params": sd.num_params(self.params["unet"]),
                "cached_latents": not augments(self.config)}

    def init_state(self):
        # Replicated over the mesh first: the loaded weights sit on the first device only.
        rep = sharding.replicated(self.mesh)
        return self.fns.create(*jax.device_put(
            (jax.random.PRNGKey(self.config.run.seed), self.params["unet"]), rep),
            learning_rate=self.config.run.learning_rate)

    def train(self, state, step, num_steps):
        out = []
        for s in range(step, step + num_steps):
            epoch = s // self.steps_per_epoch
            if self._order[0] != epoch:
                self._order = (epoch, epoch_order(self.data.train, self.config.data_seed, epoch))
            batch = put_batch(make_batch(self.data, self.config, self._order[1], s,
                                         self.steps_per_epoch), self.mesh)
            state, metrics = self.fns.step(state, batch, self.vae_params)
            out.append(metrics)
        return state, jax.tree.map(lambda *x: jnp.stack(x), *out)

    def evaluate(self, state, step, full):
        loss = (float(self.fns.val_loss(state, self.val_inputs)) if len(self.data.val)
                else float("nan"))
        return [{"loss": loss}], None

    def samples(self, state, step):
        return [np.asarray(self.fns.sample(state, self.vae_params, *self.sample_inputs))]

    def write_samples(self, i, step, samples):
        save_samples(self.run_dir(i), step, samples, self.config.sample_prompts)

    def summary(self, train, val, evals):
        return f"loss {train['loss']:.4f} val loss {val['loss']:.4f}"

    def divergence_message(self, means, step):
        return (f"diverged: {int(means['skipped'])} non-finite steps by step {step}; "
                "frozen at its last good state")

    def finish(self, states, start):
        """Saves the fine-tuned pipeline once the run is complete (unless it already is)."""
        (state,), total = states, self.total_steps
        export = os.path.join(self.run_dir(0), sd.PIPELINE_DIR)
        if jax.process_index() == 0 and int(state.step) >= total and (
                start < total or not os.path.isfile(os.path.join(export, "model_index.json"))):
            # Written beside and renamed, so that a pipeline folder is always complete.
            shutil.rmtree(export + ".tmp", ignore_errors=True)
            sd.save_pipeline(self.pipeline, self.params, eval_params(state), export + ".tmp")
            if self.config.export_pytorch:
                sd.add_pytorch_weights(export + ".tmp")
            shutil.rmtree(export, ignore_errors=True)
            os.replace(export + ".tmp", export)


def save_samples(run_dir: str, step: int, images: np.ndarray, prompts) -> str:
    """`<run>/samples/step_XXXXXX.npz` (images and prompts: `log.save_samples`) and `.png`
    (the images in a row)."""
    log.save_samples(run_dir, step, {"images": images, "prompts": np.asarray(prompts)})
    path = log.samples_path(run_dir, step).removesuffix(".npz")
    h, w = images.shape[1:3]
    row = np.full((h, len(images) * (w + 2) - 2, 3), 255, np.uint8)
    for i, image in enumerate(images):
        row[:, i * (w + 2):i * (w + 2) + w] = image
    Image.fromarray(row).save(path + ".png")
    return path + ".png"
