"""Multi-host training, simulated by two processes on this machine (CPU collectives through
gloo, over localhost), each with one CPU device."""

import os
import socket
import subprocess
import sys

import pytest
from conftest import FAST_COMPILE, LAUNCHED, REPO, tiny_flags

from jaxgen import log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(flags, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    # One CPU device per process, and the suite's fast compilation.
    env["XLA_FLAGS"] = FAST_COMPILE
    return subprocess.Popen([sys.executable, os.path.join(REPO, "experiments", "run.py"), *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_two_processes_train_together_as_one_device_does(synthetic_data_dir, tmp_path,
                                                          launched_workdir):
    port = _free_port()
    together = tmp_path / "two_hosts"
    processes = [_launch(tiny_flags(synthetic_data_dir, **LAUNCHED) + [
        f"--workdir={together}", f"--coordinator=localhost:{port}", "--num_processes=2",
        f"--process_id={i}"]) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "process 0 of 2: 1 local devices, 2 in all" in outputs[0]
    assert "process 1 of 2" in outputs[1]

    def train_records(workdir):
        return [r for r in log.read_metrics(str(workdir)) if r["split"] == "train"]

    # The same command in one process, on one device (the shared launched run).
    a, b = train_records(together), train_records(launched_workdir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [5, 10, 15, 20]
    for x, y in zip(a, b):
        for key in ("d/loss", "g/adv_loss", "g/moment_mean_gap", "d/grad_norm", "g/grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-4), key
    run = [d for d in os.listdir(together) if d.startswith("lr")][0]
    assert sorted(os.listdir(together / run / "checkpoints")) == ["20"]
    assert (together / "report.md").exists()
