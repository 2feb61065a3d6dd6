"""Data parallelism with `jax.jit` over a `("data",)` mesh: state replicated, batch sharded.

The same code runs on one CPU, on simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on a GPU, or on many hosts after
`jax.distributed.initialize()`. Batch norm inside a jitted step sees the global batch, so a run's
numbers do not depend on the device count.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxgen.errors import UserError


def make_mesh(devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis of the mesh."""
    return NamedSharding(mesh, PartitionSpec("data"))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        lower, upper = batch_size - batch_size % n, batch_size + n - batch_size % n
        raise UserError(f"The batch size {batch_size} does not divide evenly over the {n} "
                        f"devices, and each device must get the same share of the batch. Fix: set "
                        f"--config.batch_size to a multiple of {n} (e.g. {lower or upper} or "
                        f"{upper}), or run on fewer devices (e.g. CUDA_VISIBLE_DEVICES).")
