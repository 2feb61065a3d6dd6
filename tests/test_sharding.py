import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from jax.sharding import PartitionSpec

from jaxgen import sharding
from jaxgen.errors import UserError


@pytest.fixture(scope="module")
def eight_devices(synthetic_data_dir, tmp_path_factory):
    """The tiny study trained for 3 steps on 1 and on 8 simulated CPU devices, and launched
    where its batch does not split over them (one process: JAX fixes its device count when it
    starts)."""
    # The suite's fast compilation (tests/conftest.py) and 8 devices.
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "tests"),
           "XLA_FLAGS": " ".join(filter(None, (os.environ.get("XLA_FLAGS"),
                                               "--xla_force_host_platform_device_count=8")))}
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "multidevice_check.py"),
                             synthetic_data_dir, str(tmp_path_factory.mktemp("eight"))],
                            capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_same(a, b, member=None, rtol=1e-4):
    """Same metrics and samples; `member`: compare that member of sweep `a` with run `b`."""
    def pick(x):
        return x if member is None else np.asarray(x)[member]

    for step_a, step_b in zip(a["metrics"], b["metrics"]):
        for key in ("d/loss", "d/loss_real", "g/adv_loss", "g/moment_mean_gap", "g/grad_norm",
                    "d/grad_norm"):
            np.testing.assert_allclose(pick(step_a[key]), step_b[key], rtol=rtol, err_msg=key)
    # uint8 samples: at most one level apart where float noise crosses a rounding boundary
    assert np.abs(pick(a["samples"]) - np.asarray(b["samples"])).max() <= 1


def test_data_parallel_step_equals_single_device_step(eight_devices):
    """Batch norm sees the global batch: 8 devices with 2 images each train as one device with
    16, so a run's numbers do not depend on the device count."""
    _assert_same(eight_devices["data8"], eight_devices["single"])
    assert eight_devices["data8"]["state_specs"] == [str(PartitionSpec())]


def test_sweep_over_a_two_by_four_mesh_equals_single_device_run(eight_devices):
    """Member 0 of a two-run sweep (runs split over the mesh's 2 rows, each run's batch over
    4 devices) trains as the same run alone on one device."""
    _assert_same(eight_devices["sweep2x4"], eight_devices["single"], member=0)
    assert eight_devices["sweep2x4"]["state_specs"] == [str(PartitionSpec("sweep"))]
    # and the members really differ (two learning rates)
    first = eight_devices["sweep2x4"]["metrics"][-1]["d/loss"]
    assert first[0] != first[1]


def test_nothing_recompiles_after_the_first_step(eight_devices):
    for name in ("single", "data8", "sweep2x4"):
        assert eight_devices[name]["cache_size"] == 1, name


def test_batch_size_must_divide_devices(eight_devices):
    sequential, sweep = (eight_devices["launches"][k] for k in ("sequential", "sweep"))
    for result in (sequential, sweep):
        assert result["returncode"] == 2 and result["stderr"].startswith("error: ")
        assert "Traceback" not in result["stderr"]
    for phrase in ("batch size 10 does not divide evenly over the 8 devices",
                   "--config.sweep_mode=vmap --config.mesh_sweep=4", "multiple of 8"):
        assert phrase in sequential["stderr"], phrase
    # As one sweep the mesh is chosen to fit.
    assert "mesh: 4 sweep rows of 2 devices (batch 10 does not split over 8" in sweep["stdout"]
    assert "does not exist" in sweep["stderr"]


def test_mesh_shape_errors_name_the_fix():
    with pytest.raises(UserError, match="mesh_sweep"):
        sharding.make_mesh(3, [object()] * 8)
    mesh = sharding.make_mesh(1)
    with pytest.raises(UserError, match="mesh_sweep"):
        sharding.check_members(3, type("M", (), {"shape": {"sweep": 2}})())
    sharding.check_members(4, mesh)


def test_auto_sweep_mode_runs_one_after_another_on_cpu_and_sweeps_elsewhere():
    assert sharding.resolve_sweep_mode("auto", "cpu") == "sequential"
    assert sharding.resolve_sweep_mode("auto", "gpu") == "vmap"
    assert sharding.resolve_sweep_mode("vmap", "cpu") == "vmap"
    with pytest.raises(UserError, match="sweep_mode"):
        sharding.resolve_sweep_mode("parallel", "cpu")
