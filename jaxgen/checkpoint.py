"""Orbax checkpoints of a whole train state.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a process
killed at any moment (even mid-save) leaves only whole checkpoints behind; `latest_step` never
returns a half-written one. Saves are asynchronous: the device-to-host copy happens before `save`
returns, the disk write in the background.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from jaxgen.errors import UserError


def make_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
    manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
    """The latest checkpoint restored into the structure, dtypes and shardings of
    `abstract_state` (a tree of `jax.ShapeDtypeStruct`), or None if there is none."""
    step = manager.latest_step()
    return None if step is None else restore(manager, step, abstract_state)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state):
    """Checkpoint `step` restored into the structure, dtypes and shardings of `abstract_state`."""
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def abstract_like(state):
    """Shapes, dtypes and shardings of a state, for restoring into it."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def run_manager(workdir: str, run: str, max_to_keep: int = 2, best: bool = False):
    """The checkpoints of run `run` of a workdir (`<workdir>/<run>/checkpoints`), or (`best`)
    its best checkpoint by the early-stopping metric (`best_checkpoint`)."""
    return make_manager(os.path.join(workdir, run, "best_checkpoint" if best else "checkpoints"),
                        max_to_keep)


def restore_run(workdir: str, config, abstract_state, best: bool = False):
    """The latest checkpoint (or, `best`, the early-stopping best) of the run `config.run.name`
    of a workdir, restored into `abstract_state` (a tree of `jax.ShapeDtypeStruct`, e.g. from
    `jax.eval_shape`). A run without one is a `UserError` that says how to train it."""
    manager = run_manager(workdir, config.run.name, best=best)
    try:
        state = restore_latest(manager, abstract_state)
    finally:
        manager.close()
    if state is None:
        raise UserError(f"{config.run.name} has no {'best ' if best else ''}checkpoint in "
                        f"{workdir}. Fix: train it first (python experiments/run.py "
                        f"--exp={config.get('exp', 'EXP')} --workdir={workdir}).")
    return state
