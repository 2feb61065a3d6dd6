"""Run logs: `metrics.jsonl` (one JSON object per line) plus TensorBoard event files per run.

Every record names its `run`, `step` and `split` ("train" or "val"). Lines are flushed as written,
so a run can be watched live, and a process killed mid-line leaves at most one torn last line:
the reader skips it with a warning, and the next `MetricsLog` cuts it off before appending. A
resumed run logs its steps since the last checkpoint again; the reader keeps the newest record
per (run, split, step).

TensorBoard files are written by tensorboardX, which needs no TensorFlow:
`tensorboard --logdir WORKDIR`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import warnings
from collections.abc import Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"
# A published copy of the log (`report.publish`), gzipped: `read_metrics` reads either.
PUBLISHED_METRICS_FILE = METRICS_FILE + ".gz"
SAMPLES_DIR = "samples"  # <run>/samples/epoch_XXXX.npz: the figures' samples
BOUNDS_FILE = "eval_bounds.json"  # the eval metrics' anchors, scored once per workdir
# Its anchors: the floor, the ceiling and (GANs) the moment term's own optimum.
FLOOR, CEILING = "floor (MNIST train)", "ceiling (uniform noise)"
MOMENT_MATCHED = "moment-matched noise (pixels independent)"
# How a GAN's G normalizes when it samples: on the batch's own statistics or on the moving
# averages. Logged keys of G's samples carry the mode as their prefix (`batch_stats/mean_gap`).
BN_MODES = ("batch_stats", "moving_avg")


def _plain(value):
    value = np.asarray(value).item() if not isinstance(value, (str, int, float)) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """Appends records to `workdir/metrics.jsonl` and mirrors scalars to `workdir/<run>/tb`."""

    def __init__(self, workdir: str, run: str, tensorboard: bool = True):
        self.run = run
        self.path = os.path.join(workdir, METRICS_FILE)
        repair(self.path)
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, run, "tb"), flush_secs=30)

    def write(self, step: int, split: str, metrics: Mapping[str, float], **extra) -> None:
        """Non-finite values are stored as null (JSON has no NaN), as they are in TensorBoard."""
        record = {"run": self.run, "split": split, "step": int(step), **extra}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}" if split != "train" else key,
                                    float(np.asarray(value)), int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def repair(path: str) -> None:
    """Cuts a torn last line (a process killed mid-write) off the log at `path`, so that the
    next record starts a line of its own instead of being glued onto the fragment."""
    if not os.path.exists(path) or not os.path.getsize(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        end = data.rfind(b"\n") + 1
        f.truncate(end)
    warnings.warn(f"{path}: its last line was cut short ({len(data) - end} bytes, a write "
                  "interrupted); removed before appending", stacklevel=2)


def read_metrics(workdir: str) -> list[dict]:
    """All records in step order, newest kept per (run, split, step), from `metrics.jsonl` or a
    published `metrics.jsonl.gz`. A line that is not a whole record (a write cut short) is
    skipped, with a warning that says which."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        path = os.path.join(workdir, PUBLISHED_METRICS_FILE)
        if not os.path.exists(path):
            return []
    latest: dict[tuple, dict] = {}
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}, line {number}: not a whole record (a write cut "
                              f"short?), skipped: {line[:60]!r}", stacklevel=2)
                continue
            latest[(record["run"], record["split"], record["step"])] = record
    return sorted(latest.values(), key=lambda r: (r["run"], r["split"], r["step"]))


def series(records: list[dict], run: str, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric of one run; missing or null values dropped."""
    pairs = [(r["step"], r[key]) for r in records
             if r["run"] == run and r["split"] == split and r.get(key) is not None]
    steps, values = zip(*pairs) if pairs else ((), ())
    return np.asarray(steps), np.asarray(values, dtype=np.float64)


def samples_path(run_dir: str, step: int) -> str:
    """Where the samples drawn after `step` train steps are saved."""
    return os.path.join(run_dir, SAMPLES_DIR, f"step_{step:06d}.npz")


def save_samples(run_dir: str, step: int, samples: dict[str, np.ndarray]) -> None:
    """`<run_dir>/samples/step_XXXXXX.npz` (`samples_path`) holding each array of `samples`
    (uint8 images by sampling mode), written whole or not at all."""
    path = samples_path(run_dir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.savez_compressed(f, **samples)
    os.replace(path + ".tmp", path)
