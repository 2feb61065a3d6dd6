"""Data parallelism of Stable Diffusion fine-tuning: on 2 simulated CPU devices the batch is split
between them (the pretrained weights, loaded onto one device, replicated first) and the run
trains as it does on one device."""

import json
import os
import subprocess
import sys

import numpy as np
from conftest import REPO
from multidevice_diffusion_check import train_losses


def test_two_devices_train_as_one_does(tiny_sd, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests"),
           "XLA_FLAGS": " ".join(filter(None, (os.environ.get("XLA_FLAGS"),
                                               "--xla_force_host_platform_device_count=2")))}
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests",
                                                          "multidevice_diffusion_check.py"),
                             tiny_sd["pretrained"], tiny_sd["data_dir"], str(tmp_path / "two")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    one = train_losses(tiny_sd["pretrained"], tiny_sd["data_dir"], str(tmp_path / "one"), 1)
    assert len(one) == len(out["losses"]) == 2
    np.testing.assert_allclose(out["losses"], one, rtol=1e-4)
