"""Times a study's train step after warm-up, and the same model in plain PyTorch.

    python benchmarks/train_step.py --model=dcgan [--sweep=6] [--devices=N] [--mesh_sweep=R]
        [--steps=20] [--repeats=3] [--batch_size=100] [--torch=0]

- `--model`: `dcgan` (the moment-stabilization study, G 13.0M and D 87k parameters), `mlp`
  (the feed-forward GAN), `cgan` (the conditional GAN at its study's baseline), `stylegan`
  (the small StyleGAN2, R1 every 16 steps included), `ddpm` (the DDPM study's 6.8M-parameter
  UNet), `ddpm_cpu` (its CPU scale's 280k-parameter UNet) or `sd_tiny` (Stable Diffusion
  fine-tuning's step on the tiny pipeline of `sd_finetune_tiny`, written to a temporary folder
  with generated shapes). Random images: no data needed.
- `--sweep=N`: N runs (learning rates spread over the study's) trained by one vmapped step, as
  `sweep_mode=vmap` does; also times the same N runs one after another (`sweep_mode=sequential`)
  and prints the ratio.
- `--devices=N`: use the first N devices (on CPU, simulate them with
  `XLA_FLAGS=--xla_force_host_platform_device_count=N`); `--mesh_sweep=R` puts R of the mesh's
  rows on the sweep axis.
- The DCGAN, the StyleGAN and both DDPM scales are also timed in PyTorch
  (`benchmarks/torch_dcgan.py`, `torch_stylegan.py`, `torch_unet.py`: the same model and step,
  in its fastest configuration, chosen first by timing each; `--torch_config=NAME` skips the
  choice) when torch is installed, interleaved with the JAX timings, and the ratio printed
  (`jax_speedup_over_torch`). `--torch=0` leaves PyTorch out.
- The roofline line: the step's matrix-product FLOPs counted from its shapes
  (`benchmarks/flops.py`), the GFLOP/s the JAX step achieves with them, and this machine's
  fp32 matrix-product rate measured in the same run (a jitted 2048x2048 product).

Each figure is the best of `--repeats` blocks of `--steps` steps (the machine's noise only ever
adds time). The last line reads `ms_per_step=... steps_per_s=...`: per run-step (a sweep step
trains N runs, so its time is divided by N).
"""

import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flops  # noqa: E402
import torch_dcgan  # noqa: E402
import torch_stylegan  # noqa: E402
import torch_unet  # noqa: E402

from jaxgen import config as config_lib  # noqa: E402
from jaxgen import diffusion, grid, image_folder, sd, sharding  # noqa: E402
from jaxgen.cli import guarded, parse_flags  # noqa: E402
from jaxgen.errors import UserError  # noqa: E402
from jaxgen.trainers import diffusion as diffusion_trainer  # noqa: E402
from jaxgen.trainers import gan, sd_finetune  # noqa: E402

CONFIGS = {"dcgan": "moment_stab_mnist", "mlp": "moment_stab_mnist_mlp", "cgan": "cgan_mnist",
           "stylegan": "stylegan_mnist", "ddpm": "ddpm_mnist", "ddpm_cpu": "ddpm_mnist_cpu",
           "sd_tiny": "sd_finetune_tiny"}
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                           "configs")
FLAGS = ("model", "steps", "repeats", "batch_size", "sweep", "devices", "mesh_sweep", "torch",
         "warmup", "torch_config")
TORCH_PEERS = {"dcgan": torch_dcgan, "stylegan": torch_stylegan, "ddpm": torch_unet,
               "ddpm_cpu": torch_unet}


def jax_timer(config, mesh, members: int):
    """A function `time(steps) -> seconds per step` for `members` stacked runs (0: one run)."""
    run_config = grid.expand_grid(config)[0]
    fns = gan.build(run_config, mesh, members)
    n = max(members, 1)
    lrs = jnp.asarray(np.geomspace(1e-4, 1e-2, n), jnp.float32)
    if members:
        state = fns.create(jax.random.split(jax.random.PRNGKey(0), n), learning_rate=lrs,
                           moment_weight=jnp.full((n,), 0.1))
    else:
        state = fns.create(jax.random.PRNGKey(0), learning_rate=lrs[0], moment_weight=0.1)
    n_images = 10 * config.batch_size
    rng = np.random.default_rng(0)
    dataset = jax.device_put({"images": rng.integers(0, 256, (n_images, 28, 28, 1), np.uint8),
                              "labels": rng.integers(0, 10, n_images).astype(np.uint8)},
                             sharding.replicated(mesh))
    perm = jnp.arange(n_images)
    timer = step_timer(state, lambda st, i: fns.steps(st, dataset, perm, i % 10, i,
                                                      num_steps=1))
    timer.flops = lambda: flops.matmul_flops(fns.steps, state, dataset, perm, 0, 0,
                                             num_steps=1)
    return timer


def step_timer(state, step):
    """`time(steps) -> seconds per step` of `step(state, i) -> (state, metrics)`, the i-th call
    overall; the state carries over from one timing to the next. Its `flops()` (set by the
    timers that can count them) gives the step's matrix-product FLOPs."""
    holder = {"state": state, "i": 0}

    def run(steps: int) -> float:
        state, start = holder["state"], time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, holder["i"])
            holder["i"] += 1
        jax.block_until_ready((state, metrics))
        holder["state"] = state
        return (time.perf_counter() - start) / steps

    return run


def diffusion_timer(config, mesh):
    """`time(steps) -> seconds per step` of one DDPM run (the linear schedule)."""
    run_config = grid.expand_grid(config)[0]
    fns = diffusion_trainer.build(run_config, mesh)
    rep = sharding.replicated(mesh)
    sched = jax.device_put(diffusion.make_schedule("linear", config.diffusion.timesteps), rep)
    n_images = 10 * config.batch_size
    dataset = jax.device_put({"images": np.random.default_rng(0).integers(
        0, 256, (n_images, 28, 28, 1), np.uint8)}, rep)
    perm = jnp.arange(n_images)
    state = fns.create(jax.random.PRNGKey(0), learning_rate=2e-4)
    timer = step_timer(state, lambda st, i: fns.steps(st, dataset, perm, i % 10, sched,
                                                      num_steps=1))
    timer.flops = lambda: flops.matmul_flops(fns.steps, state, dataset, perm, 0, sched,
                                             num_steps=1)
    return timer


def sd_timer(config, mesh):
    """`time(steps) -> seconds per step` of Stable Diffusion fine-tuning on the tiny pipeline
    (the batch assembled on the host each step, as the trainer does)."""
    folder = tempfile.mkdtemp(prefix="jaxgen_bench_sd_")
    config.pretrained = sd.make_tiny_pipeline(os.path.join(folder, "pipeline"),
                                              resolution=config.resolution)
    config.data_dir = image_folder.write_shapes_folder(os.path.join(folder, "shapes"), n=40)
    run_config = grid.expand_grid(config)[0]
    static = sd_finetune.static_config(run_config)
    data = sd_finetune.prepare_data(static)
    fns = sd_finetune.build(run_config, mesh)
    params = sd_finetune.pretrained(config.pretrained, config.bf16)[1]
    rep = sharding.replicated(mesh)
    vae_params = jax.device_put(params["vae"], rep)
    spe = len(data.train) // config.batch_size
    order = sd_finetune.epoch_order(data.train, config.data_seed, 0)
    state = fns.create(*jax.device_put((jax.random.PRNGKey(0), params["unet"]), rep),
                       learning_rate=1e-4)

    def step(state, i):
        batch = sd_finetune.put_batch(sd_finetune.make_batch(data, run_config, order, i % spe,
                                                             spe), mesh)
        return fns.step(state, batch, vae_params)

    timer = step_timer(state, step)
    first = sd_finetune.put_batch(sd_finetune.make_batch(data, run_config, order, 0, spe), mesh)
    timer.flops = lambda: flops.matmul_flops(fns.step, state, first, vae_params)
    return timer


def torch_timer(model: str, batch_size: int, name: str = ""):
    """(configuration, `time(steps) -> seconds per step`) of `model`'s PyTorch peer in its
    fastest configuration (timed first, unless `name` is given)."""
    peer = TORCH_PEERS[model]
    args = (model, batch_size) if peer is torch_unet else (batch_size,)
    if not name:
        steps = 16 if model == "stylegan" else 3 if model == "ddpm" else 5  # R1 every 16th
        name, _, _ = peer.best(*args, steps=steps, warmup=2)
    if name not in peer.VARIANTS:
        raise UserError(f"--torch_config={name}: {model}'s PyTorch peer has no such "
                        f"configuration. Fix: choose one of {', '.join(peer.VARIANTS)}.")
    variant = peer.VARIANTS[name]
    return name, peer.step_timer(peer.make_step(*args, **variant), batch_size, **variant)


def main(argv: list[str]) -> None:
    flags, _ = parse_flags(argv, FLAGS)
    model = flags.get("model", "dcgan")
    if model not in CONFIGS:
        raise UserError(f"Unknown --model={model}. Fix: choose one of {', '.join(CONFIGS)}.")
    steps, repeats = int(flags.get("steps", 20)), int(flags.get("repeats", 3))
    warmup = int(flags.get("warmup", 2))
    sweep = int(flags.get("sweep", 0))
    devices = jax.devices()[:int(flags.get("devices", 0)) or None]
    config = config_lib.load_config(CONFIGS[model], CONFIGS_DIR)
    config.batch_size = int(flags.get("batch_size", config.batch_size))
    mesh = sharding.make_mesh(int(flags.get("mesh_sweep", 1)), devices)
    sharding.check_batch_size(config.batch_size, mesh)
    if sweep:
        sharding.check_members(sweep, mesh)
    use_torch = (model in TORCH_PEERS and not sweep and flags.get("torch", "1") != "0"
                 and torch_dcgan.available())

    if sweep and model.startswith(("ddpm", "sd")):
        raise UserError(f"--sweep: the {model} trainer trains runs one after another. Fix: "
                        "drop --sweep.")
    timer = {"ddpm": diffusion_timer, "sd": sd_timer}.get(model.split("_")[0])
    timers = {"jax": timer(config, mesh) if timer else jax_timer(config, mesh, sweep)}
    if sweep:
        timers["jax_sequential"] = jax_timer(config, sharding.make_mesh(1, devices), 0)
    if use_torch:
        name, timers["torch"] = torch_timer(model, config.batch_size,
                                            flags.get("torch_config", ""))
    start = time.perf_counter()
    for timer in timers.values():
        timer(warmup)
    warmup_s = time.perf_counter() - start
    best = {k: float("inf") for k in timers}
    for _ in range(repeats):  # interleaved, so that both sides see the same machine
        for key, timer in timers.items():
            best[key] = min(best[key], timer(steps))

    n = max(sweep, 1)
    print(f"model={model} batch_size={config.batch_size} devices={mesh.devices.size} "
          f"mesh={dict(mesh.shape)} sweep={sweep} backend={jax.default_backend()} "
          f"jax={jax.__version__} warmup_s={warmup_s:.1f} steps={steps} repeats={repeats}")
    if sweep:
        print(f"sweep_step_ms={best['jax'] * 1e3:.1f} (all {sweep} runs) "
              f"sequential_ms_per_step={best['jax_sequential'] * 1e3:.1f} (one run) "
              f"sweep_vs_sequential_throughput={best['jax_sequential'] * n / best['jax']:.2f}x")
    if use_torch:
        print(f"torch={torch_dcgan.torch.__version__} torch_config={name} "
              f"torch_ms_per_step={best['torch'] * 1e3:.1f} "
              f"jax_speedup_over_torch={best['torch'] * n / best['jax']:.2f}x")
    per_step = best["jax"] / n
    counter = getattr(timers["jax"], "flops", None)
    if counter is not None:
        step_flops, rate = counter() / n, flops.matmul_rate()
        achieved = step_flops / per_step / 1e9
        print(f"matmul_gflop_per_step={step_flops / 1e9:.2f} achieved_gflops={achieved:.1f} "
              f"machine_matmul_gflops={rate:.1f} share_of_matmul_rate={achieved / rate:.0%} "
              f"ms_at_matmul_rate={step_flops / rate / 1e6:.1f}")
    print(f"ms_per_step={per_step * 1e3:.1f} steps_per_s={1 / per_step:.2f}")


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
