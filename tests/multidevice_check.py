"""Run by tests/test_sharding.py in a process with 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`): trains a few steps of the tiny study on
one device and on meshes over all eight, launches the tiny study where its batch does not split
over them, and prints what it measured and what the launcher said as JSON.

    python tests/multidevice_check.py DATA_DIR WORKDIR
"""

import contextlib
import io
import json
import os
import sys

import jax
import numpy as np
from conftest import launch, tiny_config, tiny_flags

from jaxgen import data, grid, sharding
from jaxgen.trainers import gan

STEPS = 3


def train(mesh, members: int, configs, images):
    """STEPS steps; returns per-step metrics, G's samples and the jitted step's cache size."""
    fns = gan.build(configs[0], mesh, members)
    keys = [jax.random.fold_in(jax.random.PRNGKey(c.run.seed), 0) for c in configs]
    lrs = jax.numpy.asarray([c.run.learning_rate for c in configs])
    weights = jax.numpy.asarray([c.run.moment_weight for c in configs])
    if members:
        state = fns.create(jax.numpy.stack(keys), learning_rate=lrs, moment_weight=weights)
    else:
        state = fns.create(keys[0], learning_rate=configs[0].run.learning_rate,
                           moment_weight=configs[0].run.moment_weight)
    dataset = jax.device_put({"images": images, "labels": np.zeros(len(images), np.uint8)},
                             sharding.replicated(mesh))
    perm = jax.numpy.arange(len(images))
    metrics = []
    for i in range(STEPS):
        state, m = fns.step(state, fns.get_batch(dataset, perm, i, i))
        metrics.append({k: np.asarray(v).tolist() for k, v in m.items()})
    inputs = gan.fixed_inputs(configs[0], 16, stream=0)
    samples = np.asarray(fns.sample_uint8["batch_stats"](state, inputs)).astype(float)
    shardings = {str(x.sharding.spec) for x in jax.tree.leaves(state)}
    return {"metrics": metrics, "samples": samples.tolist(), "state_specs": sorted(shardings),
            "cache_size": fns.step._cache_size()}


def launched(*args: str) -> dict:
    """The exit status and output of `experiments/run.py ARGS` (`conftest.launch`)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = launch(None, *args).returncode
    return {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def launches(data_dir: str, workdir: str) -> dict:
    """Four runs of batch 10 on the 8 devices: one after another (the batch cannot split), and
    as one vmapped sweep, where a mesh that fits is chosen and printed before the data are read
    (so a missing data folder stops the launch there, before anything compiles)."""
    flags = tiny_flags(data_dir, seeds="(0,1,2,3)")
    no_data = tiny_flags(os.path.join(workdir, "no_data"), seeds="(0,1,2,3)")
    return {"sequential": launched(*flags, f"--workdir={workdir}/w"),
            "sweep": launched(*no_data, "--config.sweep_mode=vmap", f"--workdir={workdir}/w")}


def main(data_dir: str, workdir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    config = tiny_config(data_dir, batch_size="16", learning_rates="(0.001,0.003)")
    configs = grid.expand_grid(config)
    images = data.mnist_splits(data_dir, 100).train_images
    one = jax.devices()[:1]
    out = {
        "single": train(sharding.make_mesh(1, one), 0, configs[:1], images),
        "data8": train(sharding.make_mesh(1), 0, configs[:1], images),
        "sweep2x4": train(sharding.make_mesh(2), 2, configs, images),
        "launches": launches(data_dir, workdir),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
