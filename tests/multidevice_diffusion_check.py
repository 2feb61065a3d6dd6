"""Run by tests/test_sharding_diffusion.py in a process with 2 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`): trains the tiny Stable Diffusion
fine-tuning run's first 2 steps on a mesh over both devices (the batch split between them)
through the trainer's own hooks (`SDRuns`: its data, its replicated state, its batches, its
step), and prints its train losses as JSON. The test runs the same on one device in its own
process (`train_losses`), where the SD unit's run has compiled the step already.

    python tests/multidevice_diffusion_check.py PIPELINE DATA_DIR WORKDIR
"""

import json
import os
import sys

import jax

from jaxgen import config as config_lib
from jaxgen import grid, sharding
from jaxgen.trainers import sd_finetune

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments", "configs")


def train_losses(pretrained: str, data_dir: str, workdir: str, devices: int) -> list[float]:
    """The tiny run's train losses of its first 2 steps, on a mesh over the first `devices`."""
    config = config_lib.load_config("sd_finetune_tiny", CONFIGS_DIR)
    config_lib.apply_overrides(config, {"pretrained": pretrained, "data_dir": data_dir,
                                        "epochs": "1", "log_every_steps": "1",
                                        "checkpoint_every_steps": "0"})
    config.data_dir = sd_finetune.resolve_data(config)
    runs = sd_finetune.SDRuns(grid.expand_grid(config), workdir,
                              sharding.make_mesh(1, jax.devices()[:devices]), 0)
    _, metrics = runs.train(runs.init_state(), 0, 2)
    return jax.device_get(metrics["loss"]).tolist()


if __name__ == "__main__":
    pretrained, data_dir, workdir = sys.argv[1:4]
    print(json.dumps({"devices": jax.device_count(),
                      "losses": train_losses(pretrained, data_dir, workdir, 2)}))
