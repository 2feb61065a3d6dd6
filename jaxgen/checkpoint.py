"""Orbax checkpoints of a whole train state.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a process
killed at any moment (even mid-save) leaves only whole checkpoints behind; `latest_step` never
returns a half-written one. Saves are asynchronous: the device-to-host copy happens before `save`
returns, the disk write in the background.
"""

from __future__ import annotations

import os
import re
import shutil

import jax
import orbax.checkpoint as ocp

from jaxgen.errors import UserError


def make_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
    check_saved(manager, wait=True)  # Orbax waits for the previous save anyway, raising its error
    manager.save(step, args=ocp.args.StandardSave(state), force=True)


def check_saved(manager: ocp.CheckpointManager, wait: bool = False) -> None:
    """Raises a `UserError` at once if a background save of `manager` failed (a full disk, a
    quota, a file-size limit), instead of at the next save: it names the run (the folder above
    `<run>/checkpoints`), the step, the folder and the last intact checkpoint, which is left as
    it was, and it removes the failed save's partial folder. A save still in progress is
    checked at the next call, or waited for with `wait`."""
    try:
        # A finished save's error comes out of `wait_until_finished` (`check_for_errors` does
        # not see one that failed in the finalizing thread), which then returns at once.
        if wait or not manager.is_saving_in_progress():
            manager.wait_until_finished()
    except Exception as e:  # Orbax re-raises the background thread's error, whatever its type
        directory = str(manager.directory)
        run = os.path.basename(os.path.dirname(directory))
        names = os.listdir(directory)
        steps = sorted(int(name) for name in names if name.isdigit())
        partial = [name for name in names if ".orbax-checkpoint-tmp" in name]
        for name in partial:  # the failed save's temporary folder (`<step>.orbax-checkpoint-tmp`)
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        failed = sorted(int(s) for s in (n.split(".")[0] for n in partial) if s.isdigit())
        what = f"step {failed[-1]}" if failed else "a checkpoint"
        intact = (f"the checkpoint at step {steps[-1]} is intact, and the rerun resumes from it"
                  if steps else "no earlier checkpoint exists, so the rerun starts over")
        raise UserError(
            f"{_reason(e)} while saving {what} of {run} to {directory}; {intact}. Training "
            "stopped there rather than go on without a checkpoint. Fix: free space on that disk "
            "(or pass another --workdir) and rerun the same command.") from None


def _reason(error: BaseException) -> str:
    """The operating system's word for a failed write ("no space left on device"): from an
    OSError in the chain, or from the error code in TensorStore's message; else its first line."""
    chain = error
    while chain is not None:
        if isinstance(chain, OSError) and chain.strerror:
            return chain.strerror.lower()
        code = re.search(r"os_error_code='?(\d+)", str(chain))
        if code:
            return os.strerror(int(code.group(1))).lower()
        chain = chain.__cause__ or chain.__context__
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
