"""The one host-side training loop, shared by every family (GAN, DDPM, Stable Diffusion).

A family describes a group of its runs (one run, or a sweep whose states are stacked along a
leading axis and trained by one vmapped step) as a `Runs` subclass: how to build the first state,
train a few steps, evaluate, draw and save samples, and what to do once training is over. The
loop owns everything else, the same for every family:

- resume: every run restarts from its latest checkpoint, and a group's runs from the same step
  (`train_runs` groups them so);
- per-run logs (`log.MetricsLog`): a `meta` record, the means of the train metrics every
  `log_every_steps`, and `val` and `eval` records at every evaluation;
- the cadence, in absolute steps so that a resumed run matches a straight one: an evaluation at
  every `eval_every_steps` (or at every epoch end if it is 0 and the family evaluates by epoch)
  and at the end, its costly metrics every `eval_every_epochs`; checkpoints at every evaluation,
  every `checkpoint_every_steps` and at the end;
- divergence: a run that has skipped `max_skipped_steps` bad steps, or whose validation or eval
  metrics are not finite (it then goes back to its last checkpoint), is frozen, reported and
  logged no further, while the others go on;
- mode-collapse alerts on the eval metrics (`stability.collapse_alert`);
- early stopping on `stability.early_stop_metric`, with each run's best checkpoint kept and
  restored into a run that stops;
- end-of-run events, the progress bar, and a line per run at every evaluation; where stdout is
  not a terminal (a batch job's log), flushed progress lines with the rate and the ETA.

A family's state is a pytree with `step` and `skipped` (bad steps, frozen at the limit), and
`early_stop` (`stability.init_early_stop`) if it stops early.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxgen import checkpoint, data, sharding, stability
from jaxgen.errors import Interrupted, UserError
from jaxgen.log import MetricsLog, read_metrics


class Runs(abc.ABC):
    """A group of runs of one family, as `train_group` trains them: one run (`members` 0, the
    state is the run's own) or a sweep of `members` runs stacked along a leading axis.

    A subclass sets `steps_per_epoch` and `total_steps` in its constructor and implements the
    abstract methods; the rest have defaults a family may override.
    """

    # Train metrics shown on the progress bar and in the line printed at each evaluation.
    progress_keys: tuple[str, ...] = ()
    # Whether the family evaluates at every epoch end when `eval_every_steps` is 0 (else only at
    # the end of the run).
    eval_at_epoch_ends: bool = True
    steps_per_epoch: int
    total_steps: int

    def __init__(self, configs: Sequence[ml_collections.ConfigDict], workdir: str,
                 mesh: jax.sharding.Mesh, members: int):
        if not members and len(configs) != 1:
            raise ValueError("a group of runs that is not a sweep holds exactly one run")
        self.configs, self.workdir, self.mesh, self.members = list(configs), workdir, mesh, members
        self.config = self.configs[0]  # what the runs share (one setup: `train_runs`)
        self.names = [c.run.name for c in configs]

    def run_dir(self, i: int) -> str:
        return os.path.join(self.workdir, self.names[i])

    @property
    def meta(self) -> dict[str, Any]:
        """Extra fields of the `meta` record each run logs when it (re)starts."""
        return {}

    @abc.abstractmethod
    def init_state(self) -> Any:
        """The runs' initial state (stacked along a leading axis in a sweep)."""

    @abc.abstractmethod
    def train(self, state, step: int, num_steps: int) -> tuple[Any, dict]:
        """`num_steps` train steps from global step `step`: (state, metrics), each metric an
        array of shape (num_steps,), or (num_steps, members) in a sweep."""

    @abc.abstractmethod
    def evaluate(self, state, step: int, full: bool
                 ) -> tuple[list[dict[str, float]], list[dict[str, float]] | None]:
        """Per run: its `val` metrics, and its `eval` metrics if `full` (None when the family
        has none then)."""

    def samples(self, state, step: int) -> list | None:
        """Per run, the samples saved at this evaluation (None: none)."""
        return None

    def write_samples(self, i: int, step: int, samples) -> None:  # noqa: B027 (optional)
        """Saves run i's `samples` (one entry of `samples`' list); called on the main process."""

    def summary(self, train: dict[str, float], val: dict[str, float],
                evals: dict[str, float]) -> str:
        """What the line printed at each evaluation says of a run."""
        return " ".join(f"{k} {train[k]:.3f}" for k in self.progress_keys)

    def divergence_message(self, means: dict[str, float], step: int) -> str:
        return (f"diverged: {int(means['skipped'])} bad steps by step {step} (non-finite, or a "
                "loss above stability.max_loss); frozen at its last good state")

    def finish(self, states: list, start: int) -> None:  # noqa: B027 (optional)
        """After training (or when there was nothing left to train): `states` per run, `start`
        the step the runs resumed from."""


def data_order_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of a run's data order: `data_seed`, or the run's own seed where `data_seed` is
    negative (as the reference, which reshuffled MNIST afresh in every run)."""
    seed = config.get("data_seed", 0)
    return config.run.seed if seed < 0 else seed


class MnistRuns(Runs):
    """Runs that train on MNIST's training split (`data.mnist_splits`; a subclass may read other
    data, `load_splits`), held on the devices and
    visited in an order per epoch that is a function of (`data_order_seed`, epoch) alone: each
    run's own seed, or one `data_seed` shared by every run of a study. A sweep whose members'
    orders differ gets one order per member (`order`)."""

    def __init__(self, configs, workdir, mesh, members):
        super().__init__(configs, workdir, mesh, members)
        config = self.config
        self.splits = self.load_splits(config)
        self.n_train = len(self.splits.train_images)
        self.steps_per_epoch = data.steps_per_epoch(self.n_train, config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        seeds = [data_order_seed(c) for c in self.configs]
        # One order for all when the runs share it, else one per member, stacked.
        self.data_keys = [jax.random.fold_in(jax.random.PRNGKey(s), 1)
                          for s in (seeds[:1] if len(set(seeds)) == 1 else seeds)]
        self._order = (None, None)  # (epoch, its order)

    def load_splits(self, config) -> data.Splits:
        """The splits the runs train and validate on: MNIST's (`data.mnist_splits`)."""
        return data.mnist_splits(config.data_dir, config.val_examples, config.train_examples)

    def order(self, step: int) -> tuple[jax.Array, int]:
        """(the order of step `step`'s epoch, the step's batch index in it). The order is (n,),
        or (members, n) in a sweep whose members have orders of their own."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            perms = [data.epoch_permutation(k, epoch, self.n_train) for k in self.data_keys]
            self._order = (epoch, perms[0] if len(perms) == 1 else jnp.stack(perms))
        return self._order[1], index


@functools.cache
def tree_fns(mesh: jax.sharding.Mesh, members: int) -> dict[str, Callable]:
    """Jitted helpers on a group's state: one member taken out (`take`), put back (`put`),
    members stacked (`stack`), and the members' (skipped, stopped) (`status`)."""
    rep = sharding.replicated(mesh)
    state_sharding = sharding.member_sharded(mesh) if members else rep

    def status(state):
        stopped = (state.early_stop["stopped"] if hasattr(state, "early_stop")
                   else jnp.zeros_like(state.skipped, bool))
        return state.skipped, stopped

    return {"take": jax.jit(lambda state, i: jax.tree.map(lambda x: x[i], state),
                            out_shardings=rep),
            "put": jax.jit(lambda state, i, m: jax.tree.map(lambda x, y: x.at[i].set(y), state, m),
                           out_shardings=state_sharding),
            "stack": jax.jit(lambda *states: jax.tree.map(lambda *xs: jnp.stack(xs), *states),
                             out_shardings=state_sharding),
            "status": jax.jit(status, out_shardings=rep)}


@functools.cache
def _see_eval(mesh: jax.sharding.Mesh, members: int, patience: int, min_delta: float):
    """Early-stopping bookkeeping after an evaluation (`values`: one per member)."""
    rep = sharding.replicated(mesh)
    state_sharding = sharding.member_sharded(mesh) if members else rep
    early_stop = functools.partial(stability.early_stop, patience=patience, min_delta=min_delta)
    if members:
        early_stop = jax.vmap(early_stop)

    def see_eval(state, values):
        es, improved = early_stop(state.early_stop, values, state.step)
        return state.replace(early_stop=es), improved

    return jax.jit(see_eval, out_shardings=(state_sharding, rep))


# The signal that asked training to stop (`stop_on_signals`), or None.
_STOP: dict[str, int | None] = {"signal": None}


@contextlib.contextmanager
def stop_on_signals():
    """While training, SIGTERM and SIGINT ask the loop to stop: it saves every run of the group
    in training at the current step and raises `Interrupted`. A second SIGINT stops at once
    (KeyboardInterrupt). Only the main thread can take signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _STOP["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _STOP["signal"] = signum
        print(f"\n{signal.Signals(signum).name} received: saving every run at the current "
              "step, then stopping (Ctrl-C again stops at once, without saving).",
              file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _STOP["signal"] = None


# Where stdout is not a terminal (a batch job's log, where tqdm draws no bar), a progress line
# at the first logging step, then at most every this many seconds, and at the end.
PROGRESS_SECONDS = 60.0


def progress_line(label: str, done: int, start: int, total: int, seconds: float,
                  values: dict[str, float]) -> str:
    """`[label] step 120/2750 (4%) d/loss 0.65 g/adv_loss 3.1 | 2.31 steps/s, ETA 18m58s`."""
    rate = (done - start) / max(seconds, 1e-9)
    eta = int(round((total - done) / rate)) if rate > 0 else 0
    hours, rest = divmod(eta, 3600)
    eta_text = (f"{hours}h" if hours else "") + f"{rest // 60:02d}m{rest % 60:02d}s"
    metrics = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    return (f"[{label}] step {done}/{total} ({done / total:.0%}) {metrics} | {rate:.2f} "
            f"steps/s, ETA {eta_text}")


def eval_every_steps(config: ml_collections.ConfigDict) -> int:
    return config.get("eval_every_steps", 0) or 0


def is_eval_step(done: int, runs: Runs) -> bool:
    """Whether the loop evaluates after `done` steps."""
    every = eval_every_steps(runs.config)
    if done == runs.total_steps:
        return True
    if every:
        return done % every == 0
    return runs.eval_at_epoch_ends and done % runs.steps_per_epoch == 0


def is_full_eval(done: int, runs: Runs) -> bool:
    """Whether an evaluation after `done` steps includes the costly eval metrics: at the end,
    at every evaluation by steps, else every `eval_every_epochs`."""
    config = runs.config
    if done == runs.total_steps or eval_every_steps(config):
        return True
    return done // runs.steps_per_epoch % config.get("eval_every_epochs", 1) == 0


def steps_to_boundary(done: int, steps_per_epoch: int, config) -> int:
    """Steps in the next dispatch: up to the next multiple of `steps_per_dispatch` within the
    epoch, stopping at the epoch's end and at every logging, evaluation and checkpoint step.
    Boundaries are absolute step positions, so a resumed run dispatches the same chunks as a
    straight one."""
    index = done % steps_per_epoch
    per_dispatch = config.get("steps_per_dispatch", 1)
    limits = [per_dispatch - index % per_dispatch, steps_per_epoch - index,
              config.log_every_steps - done % config.log_every_steps]
    for every in (config.get("checkpoint_every_steps", 0), eval_every_steps(config)):
        if every:
            limits.append(every - done % every)
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


def early_stop_metric(config: ml_collections.ConfigDict) -> str:
    return config.get("stability", {}).get("early_stop_metric", "") or ""


def train_runs(make_runs: Callable[..., Runs], configs: list[ml_collections.ConfigDict],
               workdir: str, mesh: jax.sharding.Mesh | None = None,
               sweep_mode: str = "sequential",
               static_config: Callable | None = None) -> list:
    """Trains (or resumes) runs of one family, each in `workdir/<run name>/`, and returns their
    final states in the order of `configs`.

    `make_runs(configs, workdir, mesh, members)` builds the family's `Runs`. With
    `sweep_mode="vmap"` the runs train together as sweeps: one per starting step (a run killed
    mid-save, or one added to the grid later, starts elsewhere) and per `static_config(run)`
    (the part of a run config that shapes the compiled functions). `"sequential"` trains them one
    after another; `"auto"` picks by backend (`sharding.resolve_sweep_mode`). Either way each
    run's checkpoints, logs and samples are its own, so a workdir resumes in either mode.
    """
    chosen = sharding.resolve_sweep_mode(sweep_mode)
    if sweep_mode == "auto" and len(configs) > 1:
        print(f"sweep_mode=auto: {chosen} on {jax.default_backend()} "
              "(sharding.resolve_sweep_mode)")
    mesh = mesh or sharding.make_mesh()
    if chosen == "sequential":
        groups = [[c] for c in configs]
    else:
        groups = sweep_groups(configs, workdir, static_config)
    final = {}
    with stop_on_signals():
        for group in groups:
            final.update(_train_one_group(make_runs, group, workdir, mesh, chosen))
    return [final[c.run.name] for c in configs]


def sweep_groups(configs: list, workdir: str, static_config: Callable) -> list[list]:
    """The sweeps of a vmapped grid: runs of one setup (`static_config`) that can resume from
    one step, the latest step they all have a checkpoint of (runs without checkpoints start
    together from 0). So a sweep killed between two members' saves stays one sweep, while a run
    added to the grid later, with no checkpoint the others have, trains in a sweep of its own."""
    by_setup: dict = {}
    for config in configs:
        manager = checkpoint.run_manager(workdir, config.run.name, config.keep_checkpoints)
        steps = set(manager.all_steps())
        manager.close()
        by_setup.setdefault(static_config(config), []).append((config, steps))
    groups = []
    for members in by_setup.values():
        fresh = [c for c, steps in members if not steps]
        left = [(c, steps) for c, steps in members if steps]
        groups += [fresh] if fresh else []
        while left:
            start = min(max(steps) for _, steps in left)
            groups.append([c for c, steps in left if start in steps])
            left = [(c, steps) for c, steps in left if start not in steps]
    return groups


def _train_one_group(make_runs, group, workdir, mesh, chosen) -> dict:
    """Trains one group of `train_runs`; returns its final states by run name."""
    if chosen == "vmap" and len(group) % mesh.shape["sweep"]:
        names = ", ".join(c.run.name for c in group)
        print(f"[{names}] {len(group)} runs do not fill the {mesh.shape['sweep']} rows of "
              "the mesh; they train on a mesh with every device on the data axis.")
        mesh = sharding.make_mesh(1, mesh.devices.flatten().tolist())
    members = len(group) if chosen == "vmap" else 0
    sharding.check_batch_size(group[0].batch_size, mesh)
    sharding.check_members(max(members, 1), mesh)
    states = train_group(make_runs(group, workdir, mesh, members))
    return dict(zip((c.run.name for c in group), states))


def resume_point(managers: list, template, names: list[str]) -> tuple[int, list | None]:
    """(step, restored states) where a group of runs resumes: the latest step at which every
    run has a checkpoint that restores. A damaged checkpoint (truncated, or with files missing)
    is skipped for the one before it, with a note naming it and the reason, and deleted, as are
    checkpoints past the step chosen (a sweep killed between two members' saves: the members
    ahead retrain those steps identically). (0, None) when no run has a checkpoint; a
    `UserError` naming the folders when some do but none restores."""
    steps = [set(m.all_steps()) for m in managers]
    if not any(steps):
        return 0, None
    common = sorted(set.intersection(*steps), reverse=True)
    failures = []
    for step in common:
        restored = []
        for manager, name in zip(managers, names):
            try:
                restored.append(checkpoint.restore(manager, step, template))
            except Exception as e:  # noqa: BLE001 (any failure to read means damaged)
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
                failures.append(f"step {step} of {name} ({reason})")
                print(f"[{name}] the checkpoint of step {step} in {manager.directory} is "
                      f"damaged ({reason}); trying the one before it.")
                break
        if len(restored) == len(managers):
            for manager, name in zip(managers, names):
                dropped = sorted(x for x in manager.all_steps() if x > step)
                for later in dropped:
                    manager.delete(later)
                if dropped:
                    print(f"[{name}] resumes at step {step}, the latest step that every run "
                          f"of its group has intact; its checkpoints of steps "
                          f"{', '.join(map(str, dropped))} are removed (retrained the same "
                          "way).")
            return step, restored
    folders = ", ".join(str(m.directory) for m in managers)
    raise UserError(f"No checkpoint that every run of the group has restores, in {folders}: "
                    f"{'; '.join(failures) or 'the runs share no checkpoint step'}. Fix: move "
                    "those checkpoint folders away to train the runs from the start, or restore "
                    "them from a backup.")


def train_group(runs: Runs) -> list:
    """Trains a group of runs from the step they resume at to the end (see the module's
    docstring); returns each run's final state."""
    config, n, members = runs.config, len(runs.configs), runs.members
    names, workdir = runs.names, runs.workdir
    tree = tree_fns(runs.mesh, members)
    spe, total = runs.steps_per_epoch, runs.total_steps
    es_metric = early_stop_metric(config)
    is_main = jax.process_index() == 0

    state = runs.init_state()
    template = checkpoint.abstract_like(tree["take"](state, 0) if members else state)
    managers = [checkpoint.run_manager(workdir, c.run.name, c.keep_checkpoints)
                for c in runs.configs]
    best_managers = [checkpoint.run_manager(workdir, c.run.name, 1, best=True) if es_metric
                     else None for c in runs.configs]
    start, restored = resume_point(managers, template, names)
    if restored is not None:
        state = tree["stack"](*restored) if members else restored[0]

    def member(i: int):
        return tree["take"](state, i) if members else state

    def replace_member(i: int, new):
        return tree["put"](state, i, new) if members else new

    def close_managers() -> None:
        for manager in filter(None, managers + best_managers):
            checkpoint.check_saved(manager, wait=True)
            manager.close()

    def save_all(step: int) -> None:
        for i, manager in enumerate(managers):
            if manager.latest_step() != step:
                checkpoint.save(manager, step, member(i))

    skipped, stopped = (np.atleast_1d(x) for x in jax.device_get(tree["status"](state)))
    ended = [bool(s >= config.max_skipped_steps or e) for s, e in zip(skipped, stopped)]
    label = names[0] if n == 1 else f"sweep of {n}"
    if start >= total or all(ended):
        print(f"[{', '.join(names)}] finished at step {start} of {total}; nothing to train.")
        close_managers()
        states = [member(i) for i in range(n)]
        runs.finish(states, start)
        return states

    logs = [MetricsLog(workdir, name, tensorboard=config.tensorboard) if is_main else None
            for name in names]
    for log in filter(None, logs):
        log.write(start, "meta", {"steps_per_epoch": spe, "total_steps": total,
                                  "resumed": start > 0, "sweep_members": n if members else 1,
                                  **runs.meta})
    # Each run's evaluations so far (from the log, when resuming), for the collapse alerts.
    logged = read_metrics(workdir) if start else []
    history = {name: [r for r in logged if r["run"] == name and r["split"] == "eval"
                      and r["step"] <= start] for name in names}
    bar = tqdm(total=total, initial=start, desc=label, unit="step", dynamic_ncols=True,
               disable=None if is_main else True)
    if start and is_main:
        for name in names:
            bar.write(f"resuming {name} from step {start} of {total}")

    def end_run(i: int, step: int, event: str, message: str) -> None:
        ended[i] = True
        bar.write(f"[{names[i]}] {message}")
        if logs[i]:
            logs[i].write(step, "event", {event: 1.0}, message=message)

    pending, t0, done, train, last_line = [], time.perf_counter(), start, None, None
    stopped_by = None  # the signal that stopped training (`stop_on_signals`)
    while done < total:
        for manager in managers:  # a save that failed stops training now, not at the next save
            checkpoint.check_saved(manager)
        num_steps = steps_to_boundary(done, spe, config)
        state, metrics = runs.train(state, done, num_steps)
        for x in jax.tree.leaves(metrics):
            x.copy_to_host_async()  # fetched at the next log point without stalling
        pending.append(metrics)
        done += num_steps
        evaluating = is_eval_step(done, runs)
        epoch = done // spe if done % spe == 0 else done / spe
        if done % config.log_every_steps == 0 or evaluating:
            train = member_means(pending, n)
            pending = []
            for i, (log, means) in enumerate(zip(logs, train)):
                if ended[i]:
                    continue
                if log:
                    log.write(done, "train", means, epoch=done / spe)
                if means["skipped"] >= config.max_skipped_steps:
                    end_run(i, done, "diverged", runs.divergence_message(means, done))
            bar.update(done - bar.n)
            bar.set_postfix({"epoch": f"{done / spe:.2f}",
                             **{k: f"{train[0][k]:.4g}" for k in runs.progress_keys}},
                            refresh=False)
            now = time.perf_counter()
            if is_main and not sys.stdout.isatty() and (
                    last_line is None or now - last_line >= PROGRESS_SECONDS or done == total):
                last_line = now
                print(progress_line(label, done, start, total, now - t0,
                                    {k: train[0][k] for k in runs.progress_keys}), flush=True)
        if evaluating:
            val, evals = runs.evaluate(state, done, is_full_eval(done, runs))
            samples = runs.samples(state, done)
            was_ended = list(ended)
            for i, log in enumerate(logs):
                if ended[i]:
                    continue
                if log:
                    log.write(done, "val", val[i], epoch=epoch)
                    if evals is not None:
                        log.write(done, "eval", evals[i], epoch=epoch)
                if evals is not None:
                    history[names[i]].append(evals[i])
                    alert = stability.collapse_alert(history[names[i]], config.stability)
                    if alert:
                        bar.write(f"[{names[i]}] ALERT at step {done}: {alert}")
                        if log:
                            log.write(done, "alert", {"mode_collapse": 1.0}, message=alert)
                if samples is not None and is_main:
                    runs.write_samples(i, done, samples[i])
                bad = sorted(k for k, v in {**(evals[i] if evals else {}), **val[i]}.items()
                             if not np.isfinite(v))
                if bad:  # back to the last checkpoint, which the training since then spoiled
                    last = managers[i].latest_step()
                    if last is not None:
                        state = replace_member(i, checkpoint.restore(managers[i], last, template))
                    state = replace_member(i, member(i).replace(
                        skipped=jnp.asarray(config.max_skipped_steps, jnp.int32)))
                    end_run(i, done, "diverged",
                            f"diverged: non-finite {', '.join(bad)} at the evaluation of step "
                            f"{done}; frozen at its last checkpoint (step {last or 0})")
            if es_metric:
                state = _early_stopping(runs, state, val, evals, best_managers, ended, done,
                                        template, end_run)
            save_all(done)
            rate = (done - start) / (time.perf_counter() - t0)
            where = (f"epoch {done // spe}/{config.epochs}" if done % spe == 0
                     else f"step {done}/{total}")
            for i in range(n):
                if not was_ended[i]:
                    bar.write(f"[{names[i]}] {where}: "
                              f"{runs.summary(train[i], val[i], evals[i] if evals else {})} "
                              f"({rate:.2f} steps/s)")
        elif config.get("checkpoint_every_steps") and done % config.checkpoint_every_steps == 0:
            save_all(done)
        stopped_by = _STOP["signal"] if done < total else None
        if stopped_by is not None and pending:  # the steps since the last logging point
            for i, (log, means) in enumerate(zip(logs, member_means(pending, n))):
                if log and not ended[i]:
                    log.write(done, "train", means, epoch=done / spe)
        if all(ended) or stopped_by is not None:
            save_all(done)
            break
    bar.close()
    close_managers()
    for log in filter(None, logs):
        log.close()
    if stopped_by is not None:
        raise Interrupted(stopped_by, (
            f"{signal.Signals(stopped_by).name} at step {done} of {total}: {', '.join(names)} "
            f"saved at step {done}. Rerun the same command to resume from there."))
    states = [member(i) for i in range(n)]
    runs.finish(states, start)
    return states


def _early_stopping(runs: Runs, state, val, evals, best_managers, ended, done, template,
                    end_run):
    """Feeds this evaluation's `stability.early_stop_metric` to each run's bookkeeping, saves
    the best checkpoint of each run that improved, and restores it into each run that stopped.
    Evaluations without the metric count neither way."""
    config, members = runs.config, runs.members
    metric = early_stop_metric(config)
    source = [{**(evals[i] if evals else {}), **{f"val/{k}": v for k, v in val[i].items()}}
              for i in range(len(runs.configs))]
    if metric not in source[0]:
        return state
    values = np.asarray([s[metric] for s in source], np.float32)
    see_eval = _see_eval(runs.mesh, members, config.stability.patience,
                         config.stability.min_delta)
    tree = tree_fns(runs.mesh, members)
    state, improved = see_eval(state, values if members else values[0])
    improved = np.atleast_1d(jax.device_get(improved))
    _, stopped = (np.atleast_1d(x) for x in jax.device_get(tree["status"](state)))
    for i in range(len(runs.configs)):
        if ended[i]:
            continue
        current = tree["take"](state, i) if members else state
        if improved[i]:
            checkpoint.save(best_managers[i], done, current)
            best_managers[i].wait_until_finished()
        if stopped[i]:
            best_step = best_managers[i].latest_step()
            if best_step is not None:
                best = checkpoint.restore(best_managers[i], best_step, template).replace(
                    early_stop=current.early_stop, step=current.step)
                state = tree["put"](state, i, best) if members else best
            es = jax.device_get(current.early_stop)
            end_run(i, done, "early_stopped",
                    f"early stopped at step {done}: no {metric} improvement of more than "
                    f"{config.stability.min_delta:g} in {config.stability.patience} "
                    f"evaluations; the best, {float(es['best']):.4g} at step "
                    f"{int(es['best_step'])}, is restored")
    return state

