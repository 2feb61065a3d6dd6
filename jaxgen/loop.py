"""Host-side bookkeeping of the training loops every trainer shares: which steps go into one
device call, and the means of the metrics that came back."""

from __future__ import annotations

import jax
import numpy as np


def steps_to_boundary(done: int, steps_per_epoch: int, config) -> int:
    """Steps in the next dispatch: up to the next multiple of `steps_per_dispatch` within the
    epoch, stopping at the epoch's end and at every logging and checkpoint step. Boundaries are
    absolute step positions, so a resumed run dispatches the same chunks as a straight one."""
    index = done % steps_per_epoch
    limits = [config.steps_per_dispatch - index % config.steps_per_dispatch,
              steps_per_epoch - index, config.log_every_steps - done % config.log_every_steps]
    if config.checkpoint_every_steps:
        limits.append(config.checkpoint_every_steps - done % config.checkpoint_every_steps)
    return min(limits)


def member_means(pending: list[dict], n: int) -> list[dict[str, float]]:
    """Per-member means over the steps of several dispatches, each holding (steps,) arrays, or
    (steps, n) in a sweep; `skipped`, a running count, keeps its last value."""
    host = jax.device_get(pending)
    out = []
    for i in range(n):
        means = {}
        for key in host[0]:
            values = np.concatenate([np.reshape(m[key], (len(m[key]), -1))[:, i] for m in host])
            means[key] = float(values[-1] if key == "skipped" else np.mean(values))
        out.append(means)
    return out
