"""Times the moment-stabilization study's train step after warm-up.

    python benchmarks/train_step.py --model=dcgan [--steps=20] [--batch_size=100]

Uses the study's config (G 13.0M, D 87k parameters) and random images, so it needs no data.
The last line reads `ms_per_step=... steps_per_s=...`.
"""

import os
import sys
import time

import jax
import numpy as np

from jaxgen import config as config_lib
from jaxgen import experiment, sharding
from jaxgen.cli import guarded, parse_flags
from jaxgen.errors import UserError
from jaxgen.trainers import gan

CONFIGS = {"dcgan": "moment_stab_mnist"}
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                           "configs")


def main(argv: list[str]) -> None:
    flags, _ = parse_flags(argv, ("model", "steps", "batch_size", "warmup"))
    model = flags.get("model", "dcgan")
    if model not in CONFIGS:
        raise UserError(f"Unknown --model={model}. Fix: choose one of {', '.join(CONFIGS)}.")
    steps, warmup = int(flags.get("steps", 20)), int(flags.get("warmup", 3))
    config = config_lib.load_config(CONFIGS[model], CONFIGS_DIR)
    config.batch_size = int(flags.get("batch_size", config.batch_size))
    run_config = experiment.expand_grid(config)[0]
    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    fns = gan._compiled(gan.static_config(run_config), mesh)
    state = fns["create"](jax.random.PRNGKey(0), learning_rate=1e-3, moment_weight=0.1)
    images = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (10 * config.batch_size, 28, 28, 1), np.uint8), sharding.replicated(mesh))
    perm = jax.numpy.arange(len(images))

    def run(n, state):
        for i in range(n):
            state, metrics = fns["step"](state, fns["get_batch"](images, perm, i % 10))
        jax.block_until_ready((state, metrics))
        return state

    t = time.perf_counter()
    state = run(warmup, state)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    run(steps, state)
    per_step = (time.perf_counter() - t) / steps
    print(f"model={model} batch_size={config.batch_size} devices={mesh.devices.size} "
          f"backend={jax.default_backend()} warmup_s={compile_s:.1f} steps={steps}")
    print(f"ms_per_step={per_step * 1e3:.1f} steps_per_s={1 / per_step:.2f}")


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
