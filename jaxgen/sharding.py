"""Devices as a 2-D mesh `("sweep", "data")`, used through `jax.jit` shardings.

- `data`: data parallelism. The batch is split along it, the state replicated. Batch norm inside
  a jitted step normalizes over the global batch (XLA inserts the cross-device reductions), so a
  run's numbers do not depend on the device count.
- `sweep`: the members of a vmapped sweep (one run per member, stacked along a leading axis) are
  split along it, so a grid of runs spreads over the devices; each member's batch is split over
  the `data` devices of its row.

The same code runs on one CPU, on simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on GPUs, and on many hosts after
`jax.distributed.initialize()` (`jaxgen.cli`), where `jax.devices()` lists every host's devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgen.errors import UserError

SWEEP_MODES = ("auto", "vmap", "sequential")


def resolve_sweep_mode(mode: str, backend: str | None = None) -> str:
    """How a grid of runs that share one setup trains: `vmap` (one sweep, states stacked),
    `sequential` (one run after another), or `auto`, which picks by backend from measurement:
    on CPU a vmapped sweep of 6 DCGAN runs gave 0.72-0.90x the throughput of the same runs one
    after another (`benchmarks/train_step.py --sweep=6`, `benchmarks/README.md`), because XLA:CPU
    already spreads one run's step over every core and batching the members adds copies; on an
    accelerator one run leaves most of the chip idle, so `auto` sweeps there. Both modes give
    the same numbers."""
    if mode not in SWEEP_MODES:
        raise UserError(f"Unknown --config.sweep_mode={mode}. Fix: choose one of "
                        f"{', '.join(SWEEP_MODES)}.")
    if mode != "auto":
        return mode
    return "sequential" if (backend or jax.default_backend()) == "cpu" else "vmap"


def make_mesh(sweep: int = 1, devices: list | None = None) -> Mesh:
    """All devices (or `devices`) as a (sweep, data) grid with `sweep` rows."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    if sweep < 1 or devices.size % sweep:
        raise UserError(f"--config.mesh_sweep={sweep} does not divide the {devices.size} devices "
                        "into rows. Fix: set it to a divisor of the device count (1 puts every "
                        "device on the data axis).")
    return Mesh(devices.reshape(sweep, devices.size // sweep), ("sweep", "data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis (and copied along `sweep`)."""
    return NamedSharding(mesh, PartitionSpec("data"))


def member_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (sweep member) axis split over the `sweep` axis (and copied along `data`)."""
    return NamedSharding(mesh, PartitionSpec("sweep"))


def member_batch_sharded(mesh: Mesh) -> NamedSharding:
    """A sweep's per-member batches, (members, batch, ...): members along `sweep`, each batch
    along `data`."""
    return NamedSharding(mesh, PartitionSpec("sweep", "data"))


def sweep_rows_for(batch_size: int, devices: int, members: int) -> int | None:
    """The fewest sweep rows (> 1) of a mesh of `devices` whose data axis splits the batch
    evenly and whose rows split the sweep's `members` evenly, or None. E.g. a batch of 100 and
    18 runs on 8 devices: 2 rows of 4 devices."""
    for rows in range(2, devices + 1):
        if devices % rows == 0 and batch_size % (devices // rows) == 0 and members % rows == 0:
            return rows
    return None


def check_batch_size(batch_size: int, mesh: Mesh, members: int = 0) -> None:
    """Refuses a batch the mesh's data axis cannot split evenly; the fix names a mesh that fits
    a sweep of `members` runs, if there is one, before a change of batch size (which would
    change the study)."""
    n = mesh.shape["data"]
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        rows = sweep_rows_for(batch_size, mesh.devices.size, members) if members else None
        mesh_fix = (f"train the runs as one sweep on a mesh of {rows} rows of "
                    f"{mesh.devices.size // rows} devices (--config.sweep_mode=vmap "
                    f"--config.mesh_sweep={rows}), or " if rows else "")
        raise UserError(f"The batch size {batch_size} does not divide evenly over the {n} "
                        f"devices, and each device must get the same share of the batch. Fix: "
                        f"{mesh_fix}run on fewer devices (e.g. CUDA_VISIBLE_DEVICES), or set "
                        f"--config.batch_size to a multiple of {n} (e.g. {lower or upper} or "
                        f"{upper}), which changes the study.")


def check_members(members: int, mesh: Mesh) -> None:
    n = mesh.shape["sweep"]
    if members % n:
        raise UserError(f"The sweep has {members} members, which do not divide evenly over the "
                        f"{n} rows of the device mesh (--config.mesh_sweep={n}). Fix: set "
                        f"--config.mesh_sweep to a divisor of {members}, or change the grid.")
