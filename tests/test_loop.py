"""The one training loop (`jaxgen.loop`) on a toy family whose step costs nothing: the cadence of
logs, evaluations and checkpoints, exact resume, early stopping with the best state restored,
and divergence (bad steps, or a non-finite evaluation sent back to the last checkpoint). Every
family runs on this loop, so these behaviours are tested here once."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import checkpoint, log, loop, sharding, stability


@flax.struct.dataclass
class ToyState:
    step: jax.Array
    w: jax.Array  # the number of steps trained, as a float: the "parameters"
    skipped: jax.Array
    early_stop: dict


def toy_config(name="toy", **fields):
    config = ml_collections.ConfigDict({
        "run": {"name": name}, "epochs": 3, "batch_size": 1, "max_skipped_steps": 2,
        "log_every_steps": 2, "steps_per_dispatch": 4, "checkpoint_every_steps": 0,
        "keep_checkpoints": 5, "tensorboard": False, "eval_every_epochs": 1,
        "stability": stability.default_config()})
    config.update(fields)
    return config


@jax.jit
def _toy_steps(state, bad_from):
    """One dispatch of toy steps: w counts good steps; from step `bad_from` every step is bad."""
    bad = state.step >= bad_from
    frozen = state.skipped >= 2
    good = ~bad & ~frozen
    new = state.replace(step=state.step + 1, w=jnp.where(good, state.w + 1.0, state.w),
                        skipped=state.skipped + (bad & ~frozen).astype(jnp.int32))
    return new, {"loss": new.w, "skipped": new.skipped.astype(jnp.float32)}


class ToyRuns(loop.Runs):
    """Epochs of 4 steps; the validation loss follows `val_losses` (by evaluation), the bad
    steps start at `bad_from`."""

    progress_keys = ("loss",)

    def __init__(self, configs, workdir, mesh, members, val_losses=None, bad_from=10**6):
        super().__init__(configs, workdir, mesh, members)
        self.steps_per_epoch, self.total_steps = 4, 4 * configs[0].epochs
        self.val_losses, self.bad_from, self.evaluated = val_losses, bad_from, []

    def init_state(self):
        return ToyState(step=jnp.zeros((), jnp.int32), w=jnp.zeros(()),
                        skipped=jnp.zeros((), jnp.int32), early_stop=stability.init_early_stop())

    def train(self, state, step, num_steps):
        out = []
        for _ in range(num_steps):
            state, metrics = _toy_steps(state, self.bad_from)
            out.append(metrics)
        return state, jax.tree.map(lambda *x: jnp.stack(x), *out)

    def evaluate(self, state, step, full):
        self.evaluated.append((step, full))
        k = step // self.steps_per_epoch - 1
        loss = self.val_losses[k] if self.val_losses else float(state.w)
        return [{"loss": loss}], [{"eval/score": float(state.w)}] if full else None


def train(workdir, config, **kwargs):
    runs = ToyRuns([config], str(workdir), sharding.make_mesh(), 0, **kwargs)
    (state,) = loop.train_group(runs)
    return runs, state


def records(workdir, split):
    return [r for r in log.read_metrics(str(workdir)) if r["split"] == split]


def test_cadence_of_logs_evaluations_and_checkpoints(tmp_path):
    config = toy_config(epochs=3, eval_every_epochs=2, checkpoint_every_steps=6)
    runs, state = train(tmp_path, config)
    assert int(state.step) == 12 and float(state.w) == 12
    # Train means every 2 steps; an evaluation at each epoch end, the costly part every 2
    # epochs and at the end; checkpoints at evaluations and every 6 steps.
    assert [r["step"] for r in records(tmp_path, "train")] == [2, 4, 6, 8, 10, 12]
    assert runs.evaluated == [(4, False), (8, True), (12, True)]
    assert [r["step"] for r in records(tmp_path, "eval")] == [8, 12]
    assert [r["epoch"] for r in records(tmp_path, "val")] == [1, 2, 3]
    manager = checkpoint.run_manager(str(tmp_path), "toy", 5)
    assert manager.all_steps() == [4, 6, 8, 12]
    manager.close()
    meta = records(tmp_path, "meta")[0]
    assert meta["total_steps"] == 12 and meta["resumed"] is False
    # By steps instead of epochs: every 3 steps and at the end, each one with the costly part.
    runs, _ = train(tmp_path / "by_steps", toy_config(epochs=2, eval_every_steps=3))
    assert runs.evaluated == [(3, True), (6, True), (8, True)]


def test_dispatch_chunks_align_to_absolute_steps():
    config = toy_config(steps_per_dispatch=10, log_every_steps=5)
    # 20 steps per epoch: chunks of 5 (logging every 5 steps) whatever the starting point.
    assert [loop.steps_to_boundary(d, 20, config) for d in (0, 5, 18, 20, 23)] == [5, 5, 2, 5, 2]
    config = toy_config(steps_per_dispatch=4, log_every_steps=100, checkpoint_every_steps=6)
    assert [loop.steps_to_boundary(d, 10, config) for d in (0, 4, 6, 8, 10)] == [4, 2, 2, 2, 2]
    config = toy_config(steps_per_dispatch=8, log_every_steps=100, eval_every_steps=3)
    assert [loop.steps_to_boundary(d, 20, config) for d in (0, 3, 6, 8)] == [3, 3, 2, 1]


def test_resume_continues_exactly_and_says_so(tmp_path, capsys):
    _, straight = train(tmp_path / "straight", toy_config(epochs=3))
    train(tmp_path / "resumed", toy_config(epochs=1))
    capsys.readouterr()
    _, resumed = train(tmp_path / "resumed", toy_config(epochs=3))
    assert "resuming toy from step 4 of 12" in capsys.readouterr().out
    assert jax.tree.all(jax.tree.map(np.array_equal, straight, resumed))
    metas = records(tmp_path / "resumed", "meta")
    assert [m["resumed"] for m in metas] == [False, True] and metas[1]["step"] == 4
    keep = lambda rs: [(r["step"], r["loss"]) for r in rs]
    assert keep(records(tmp_path / "resumed", "train")) == keep(records(tmp_path / "straight",
                                                                        "train"))
    # A finished run trains nothing more.
    _, again = train(tmp_path / "resumed", toy_config(epochs=3))
    assert int(again.step) == 12 and len(records(tmp_path / "resumed", "meta")) == 2


def test_early_stopping_keeps_and_restores_the_best_state(tmp_path):
    """`stability.early_stop_metric`: the best evaluation's state is checkpointed, and after
    `patience` evaluations without improvement the run ends with it restored."""
    config = toy_config(epochs=6)
    config.stability.early_stop_metric, config.stability.patience = "val/loss", 2
    runs, state = train(tmp_path, config, val_losses=(0.5, 0.3, 0.4, 0.35, 0.1, 0.1))
    best = checkpoint.run_manager(str(tmp_path), "toy", 1, best=True)
    assert best.latest_step() == 8
    best.close()
    assert float(state.w) == 8  # the best, restored
    assert int(state.step) == 16 and float(state.early_stop["best"]) == pytest.approx(0.3)
    (event,) = records(tmp_path, "event")
    assert event["early_stopped"] and event["step"] == 16 and "0.3 at step 8" in event["message"]
    assert [r["step"] for r in records(tmp_path, "val")] == [4, 8, 12, 16]  # none after


def test_bad_steps_end_a_run_frozen_at_its_last_good_state(tmp_path):
    runs, state = train(tmp_path, toy_config(epochs=3), bad_from=5)
    assert float(state.w) == 5 and int(state.skipped) == 2
    (event,) = records(tmp_path, "event")
    assert event["diverged"] and event["step"] == 8 and "2 bad steps" in event["message"]
    assert max(r["step"] for r in records(tmp_path, "train")) == 8
    manager = checkpoint.run_manager(str(tmp_path), "toy", 5)
    assert manager.latest_step() == 8  # saved when it ended
    manager.close()


def test_a_non_finite_evaluation_sends_the_run_back_to_its_last_checkpoint(tmp_path):
    runs, state = train(tmp_path, toy_config(epochs=3), val_losses=(0.5, float("nan"), 0.1))
    assert float(state.w) == 4 and int(state.skipped) == 2  # epoch 1's state, frozen
    (event,) = records(tmp_path, "event")
    assert event["step"] == 8 and "non-finite loss at the evaluation of step 8" in event["message"]
    assert "its last checkpoint (step 4)" in event["message"]


def test_batch_logs_get_flushed_progress_lines_with_the_eta(tmp_path, capsys, monkeypatch):
    """Where stdout is not a terminal (here pytest's capture; a batch job's log file), tqdm
    draws nothing, so the loop prints progress lines: every logging step with the limit at 0 s,
    else at most once a minute."""
    monkeypatch.setattr(loop, "PROGRESS_SECONDS", 0.0)
    capsys.readouterr()
    train(tmp_path, toy_config(epochs=1))
    lines = [line for line in capsys.readouterr().out.splitlines() if "steps/s, ETA" in line]
    assert [line.split(" (")[0] for line in lines] == ["[toy] step 2/4", "[toy] step 4/4"]
    assert "(50%) loss 1.5 |" in lines[0] and lines[-1].endswith("ETA 00m00s")
    assert loop.progress_line("r", 120, 0, 2750, 60.0, {"d/loss": 0.65}) == (
        "[r] step 120/2750 (4%) d/loss 0.65 | 2.00 steps/s, ETA 21m55s")
