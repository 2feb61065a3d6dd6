"""Run by tests/test_sharding_diffusion.py in a process with 2 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`): trains the tiny Stable Diffusion
fine-tuning run's first steps on one device and on a mesh over both (the batch split between
them) through the trainer's own hooks (`SDRuns`: its data, its replicated state, its batches, its
step), and prints both runs' train losses as JSON.

    python tests/multidevice_diffusion_check.py FOLDER
"""

import json
import os
import sys

import jax

from jaxgen import config as config_lib
from jaxgen import grid, image_folder, sd, sharding
from jaxgen.trainers import sd_finetune

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments", "configs")


def main(folder: str) -> None:
    config = config_lib.load_config("sd_finetune_tiny", CONFIGS_DIR)
    config_lib.apply_overrides(config, {
        "pretrained": sd.make_tiny_pipeline(os.path.join(folder, "pipeline")),
        "data_dir": image_folder.write_shapes_folder(os.path.join(folder, "shapes"), n=12,
                                                     size=20),
        "epochs": "1", "log_every_steps": "1", "checkpoint_every_steps": "0"})
    config.data_dir = sd_finetune.resolve_data(config)
    run = grid.expand_grid(config)[0]
    losses = {}
    for devices in (1, 2):
        runs = sd_finetune.SDRuns([run], os.path.join(folder, f"devices{devices}"),
                                  sharding.make_mesh(1, jax.devices()[:devices]), 0)
        _, metrics = runs.train(runs.init_state(), 0, 2)
        losses[devices] = jax.device_get(metrics["loss"]).tolist()
    print(json.dumps({"devices": jax.device_count(), "losses": losses}))


if __name__ == "__main__":
    main(sys.argv[1])
