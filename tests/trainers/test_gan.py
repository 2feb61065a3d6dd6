import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, launch, tiny_config, tiny_flags

from jaxgen import checkpoint, data, grid, log, loop, report, sharding
from jaxgen.trainers import gan


def _run_config(data_dir, **overrides):
    return grid.expand_grid(tiny_config(data_dir, **overrides))[0]


def _fns(run_config):
    return gan.build(run_config)


def _one_step(data_dir, moment_weight=0.1):
    run_config = _run_config(data_dir)
    fns = _fns(run_config)
    state = fns.create(jax.random.PRNGKey(0), learning_rate=1e-3, moment_weight=moment_weight)
    dataset, perm = _dataset(data_dir)
    before = jax.device_get(state)
    after, metrics = fns.steps(state, dataset, perm, 0, 0, num_steps=1)
    return before, jax.device_get(after), jax.device_get(jax.tree.map(lambda x: x[0], metrics))


def _dataset(data_dir):
    """The training images placed as the trainer places them (so that the train step it
    compiled serves the tests too), and the identity order."""
    splits = data.mnist_splits(data_dir, 100)
    dataset = jax.device_put({"images": splits.train_images, "labels": splits.train_labels},
                             sharding.replicated(sharding.make_mesh()))
    return dataset, jax.numpy.arange(len(splits.train_images))


def test_one_step_changes_both_networks(synthetic_data_dir):
    before, after, metrics = _one_step(synthetic_data_dir)
    assert int(after.step) == 1
    for name in ("g_params", "d_params", "g_batch_stats"):
        changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                               getattr(before, name), getattr(after, name)))
        assert all(changed), name
    assert metrics["finite"] == 1.0
    for key in ("d/loss", "g/adv_loss", "g/moment_loss", "g/moment_mean_gap", "g/moment_var_gap",
                "d/grad_norm", "g/grad_norm", "d/update_norm", "g/param_norm", "d/acc_real"):
        assert np.isfinite(metrics[key]), key
    assert metrics["g/loss"] == pytest.approx(metrics["g/adv_loss"] + metrics["g/moment_loss"])
    assert metrics["g/moment_loss"] == pytest.approx(
        0.1 * (metrics["g/moment_mean_gap"] + metrics["g/moment_var_gap"]), rel=1e-5)


def test_g_moving_averages_update_once_per_step(synthetic_data_dir):
    """As the reference's G step, which alone runs the batch-norm update ops: after one step
    G's moving averages are m * before + (1 - m) * the batch statistics of G's forward pass on
    the step's z (momentum m = 0.99), not that update applied twice (effective m = 0.98)."""
    run_config = _run_config(synthetic_data_dir)
    before, after, _ = _one_step(synthetic_data_dir)
    g_model, _ = gan.make_models(run_config)
    z = gan.step_z(before, run_config.batch_size, run_config.z_dim)
    _, once = g_model.apply({"params": before.g_params, "batch_stats": before.g_batch_stats}, z,
                            train=True, mutable=["batch_stats"])
    twice = jax.tree.map(lambda a0, a1: a1 + 0.99 * (a1 - a0), before.g_batch_stats,
                         once["batch_stats"])
    for got, want, wrong in zip(*(jax.tree.leaves(t) for t in (
            after.g_batch_stats, once["batch_stats"], twice))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(got, wrong, rtol=1e-5, atol=1e-6)


def test_moment_weight_zero_still_logs_gaps(synthetic_data_dir):
    _, _, metrics = _one_step(synthetic_data_dir, moment_weight=0.0)
    assert metrics["g/moment_loss"] == 0.0
    assert metrics["g/moment_mean_gap"] > 0 and metrics["g/moment_var_gap"] > 0


# Metrics of the tiny study after one step from seed 0; loose tolerances so that they survive
# harmless numeric changes, yet catch any change to the model, losses, data order or randomness.
# (Sanity: loss_real is near ln 2 for near-zero logits at target 0.9; G starts near 0 while the
# background is -1, so the mean gap is near 784 pixels x 1.)
GOLDEN = {"d/loss": 1.8792, "d/loss_real": 0.5639, "d/loss_fake": 1.3153,
          "g/adv_loss": 1.2389, "g/moment_mean_gap": 773.2056, "g/moment_var_gap": 70.4025}


def test_golden_metrics_after_one_step(synthetic_data_dir):
    _, _, metrics = _one_step(synthetic_data_dir)
    got = {k: round(float(metrics[k]), 4) for k in GOLDEN}
    for key, value in GOLDEN.items():
        assert got[key] == pytest.approx(value, rel=2e-3), (key, str(got))


def _params(state):
    return jax.device_get({"g": state.g_params, "d": state.d_params, "g_bs": state.g_batch_stats,
                           "d_opt": state.d_opt_state, "step": state.step})


def _assert_identical(a, b):
    flat_a, flat_b = jax.tree.leaves(_params(a)), jax.tree.leaves(_params(b))
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(x, y)


def test_resume_is_exact_and_finished_runs_are_not_retrained(synthetic_data_dir, tmp_path):
    straight = gan.train_and_evaluate(_run_config(synthetic_data_dir, epochs="3"),
                                      str(tmp_path / "a"))
    # Interrupted after one epoch and a half (mid-epoch checkpoints every 5 steps), then resumed
    # by raising the epochs as a user would.
    gan.train_and_evaluate(_run_config(synthetic_data_dir, epochs="1"), str(tmp_path / "b"))
    resumed = gan.train_and_evaluate(_run_config(synthetic_data_dir, epochs="3"),
                                     str(tmp_path / "b"))
    _assert_identical(straight, resumed)
    assert int(resumed.step) == 3 * 20

    lines = (tmp_path / "b" / log.METRICS_FILE).read_text().count("\n")
    again = gan.train_and_evaluate(_run_config(synthetic_data_dir, epochs="3"),
                                   str(tmp_path / "b"))
    _assert_identical(straight, again)
    assert (tmp_path / "b" / log.METRICS_FILE).read_text().count("\n") == lines

    run = _run_config(synthetic_data_dir).run.name
    val = [r for r in log.read_metrics(str(tmp_path / "b")) if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3]
    assert all(np.isfinite(r["batch_stats/mean_gap"]) and np.isfinite(r["moving_avg/var_gap"])
               for r in val)
    evals = [r for r in log.read_metrics(str(tmp_path / "b")) if r["split"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    for prefix in ("eval/", "eval_movavg/"):
        for key in ("fd", "kid", "precision", "recall", "coverage", "class_kl", "mean_gap",
                    "var_gap"):
            assert np.isfinite(evals[-1][prefix + key]), prefix + key
    assert 0 <= evals[-1]["eval/recall"] <= 1 and 1 <= evals[-1]["eval/coverage"] <= 10
    bounds = json.loads((tmp_path / "b" / gan.BOUNDS_FILE).read_text())
    floor, ceiling = bounds["floor (MNIST train)"], bounds["ceiling (uniform noise)"]
    assert floor["eval/fd"] < evals[-1]["eval/fd"] < ceiling["eval/fd"]
    samples = np.load(tmp_path / "b" / run / "samples" / "step_000060.npz")
    assert samples["batch_stats"].shape == samples["moving_avg"].shape == (10, 28, 28, 1)


@pytest.fixture(scope="module")
def straight_quiet(synthetic_data_dir, tmp_path_factory):
    """The tiny run without evaluations, trained straight through as the launcher trains it
    (its default sweep mode, auto): what interrupted and resumed runs must end as."""
    return gan.train_runs([_run_config(synthetic_data_dir, eval_samples="0")],
                          str(tmp_path_factory.mktemp("straight")), sweep_mode="auto")[0]


def test_killed_run_resumes_exactly(synthetic_data_dir, tmp_path, capsys, straight_quiet):
    """kill -9 at an arbitrary moment (here: while it saves a checkpoint every 3 steps) loses only
    the steps since the last whole checkpoint, and the resumed run ends bit-identical. The killed
    launch is a process of its own; the rerun goes through the launcher's code path in this
    process, which has the steps compiled already."""
    workdir = tmp_path / "killed"
    quiet = {"eval_samples": "0"}  # no evaluation: what is compared is the state
    flags = tiny_flags(synthetic_data_dir, checkpoint_every_steps="3", **quiet) + [
        f"--workdir={workdir}"]
    command = [sys.executable, os.path.join(REPO, "experiments", "run.py"), *flags]
    run = _run_config(synthetic_data_dir).run.name
    ckpt_dir = workdir / run / "checkpoints"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded machine compiles slowly
    while time.time() < deadline and process.poll() is None:
        steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.exists() else []
        if steps and max(steps) >= 9:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    manager = checkpoint.make_manager(str(ckpt_dir))
    assert manager.latest_step() is not None and manager.latest_step() < 40, "was not killed"
    manager.close()

    finished = launch(capsys, *flags)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"resuming {run} from step" in finished.stdout + finished.stderr
    fns = _fns(_run_config(synthetic_data_dir))
    template = fns.create(jax.random.PRNGKey(0), learning_rate=0.0, moment_weight=0.0)
    manager = checkpoint.make_manager(str(ckpt_dir))
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(template))
    manager.close()
    _assert_identical(straight_quiet, restored)


def test_sigterm_and_sigint_save_the_current_step_and_the_rerun_resumes_exactly(
        synthetic_data_dir, tmp_path, capsys, monkeypatch, straight_quiet):
    """Through the launcher's code path (`cli.guarded(run_main)`, in this process): SIGTERM at
    step 8 and then SIGINT at step 23 each save the run at that step, say so and exit 143 and
    130; the third launch resumes and ends bit-identical to a straight run. The signals come
    from inside training (a hook on the train call), so they land while the loop runs."""
    quiet = {"eval_samples": "0"}
    flags = tiny_flags(synthetic_data_dir, **quiet) + [f"--workdir={tmp_path / 'w'}"]
    run = _run_config(synthetic_data_dir).run.name
    train = gan.GANRuns.train

    def run_launch(signum=None, at=None):
        def hooked(self, state, step, num_steps):
            if step == at:
                os.kill(os.getpid(), signum)
            return train(self, state, step, num_steps)

        monkeypatch.setattr(gan.GANRuns, "train", hooked)
        return launch(capsys, *flags)

    ckpt_dir = tmp_path / "w" / run / "checkpoints"
    for signum, at, code in ((signal.SIGTERM, 7, 143), (signal.SIGINT, 22, 130)):
        out = run_launch(signum, at)
        name = signal.Signals(signum).name
        assert out.returncode == code, out.stderr[-2000:]
        assert f"interrupted: {name} at step {at + 1} of 40: {run} saved at step {at + 1}" in (
            out.stderr)
        manager = checkpoint.make_manager(str(ckpt_dir))
        assert manager.latest_step() == at + 1
        manager.close()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back
    out = run_launch()
    assert out.returncode == 0 and f"resuming {run} from step 23 of 40" in out.stdout + out.stderr
    _, _, resumed = gan.restore(str(tmp_path / "w"), run)
    _assert_identical(straight_quiet, resumed)


def test_a_failed_save_stops_training_at_once_and_the_rerun_resumes_exactly(
        synthetic_data_dir, tmp_path, capsys, monkeypatch, straight_quiet):
    """Through the launcher's code path: from step 10 on, files may not grow past 20 kB (what a
    full disk does to a write, with EFBIG for ENOSPC), so the save of step 15 fails in Orbax's
    background thread. Training stops at the next log interval, not at the next save, with one
    paragraph naming the step, the run and the intact checkpoint, exit status 2, and no
    partial folder; the rerun resumes from step 10 and ends as a straight run."""
    import resource

    flags = tiny_flags(synthetic_data_dir, eval_samples="0", checkpoint_every_steps="5") + [
        f"--workdir={tmp_path / 'w'}"]
    run = _run_config(synthetic_data_dir).run.name
    ckpt_dir = tmp_path / "w" / run / "checkpoints"
    train = gan.GANRuns.train
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG

    def hooked(self, state, step, num_steps):
        if step == 10:  # once the save of step 10 is whole
            deadline = time.time() + 60
            while not (ckpt_dir / "10").is_dir() and time.time() < deadline:
                time.sleep(0.01)
            resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
        return train(self, state, step, num_steps)

    monkeypatch.setattr(gan.GANRuns, "train", hooked)
    try:
        out = launch(capsys, *flags)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    monkeypatch.setattr(gan.GANRuns, "train", train)
    assert out.returncode == 2, out.stderr[-2000:]
    message = out.stderr.split("error: ", 1)[1]
    assert message.startswith(f"file too large while saving step 15 of {run} to "), message
    assert "the checkpoint at step 10 is intact" in message and "Traceback" not in out.stderr
    assert sorted(os.listdir(ckpt_dir)) == ["10", "5"]
    logged = [r["step"] for r in log.read_metrics(str(tmp_path / "w")) if r["split"] == "train"]
    assert max(logged) <= 20  # stopped within an interval of the failed save, not at step 40
    out = launch(capsys, *flags)
    assert out.returncode == 0 and f"resuming {run} from step 10 of 40" in out.stdout + out.stderr
    _, _, resumed = gan.restore(str(tmp_path / "w"), run)
    _assert_identical(straight_quiet, resumed)


def test_a_damaged_checkpoint_falls_back_to_the_one_before(synthetic_data_dir, tmp_path,
                                                           capsys, straight_quiet):
    """A truncated latest checkpoint: the run resumes from the one before, says which and why,
    and ends as a straight run; with no intact checkpoint left (one truncated, one without its
    _METADATA), a one-paragraph error names the folder."""
    run = _run_config(synthetic_data_dir).run.name
    workdir = tmp_path / "w"

    def flags(epochs):
        return tiny_flags(synthetic_data_dir, eval_samples="0", checkpoint_every_steps="5",
                          epochs=epochs) + [f"--workdir={workdir}"]

    def truncate(step):
        folder = workdir / run / "checkpoints" / str(step)
        biggest = max((p for p in folder.rglob("*") if p.is_file()), key=os.path.getsize)
        biggest.write_bytes(biggest.read_bytes()[:len(biggest.read_bytes()) // 2])

    assert launch(capsys, *flags("1")).returncode == 0
    truncate(20)
    out = launch(capsys, *flags("2"))
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert f"[{run}] the checkpoint of step 20 in" in text and "is damaged (" in text
    assert f"resuming {run} from step 15 of 40" in text
    _, _, resumed = gan.restore(str(workdir), run)
    _assert_identical(straight_quiet, resumed)

    truncate(40)
    next((workdir / run / "checkpoints" / "35").rglob("_METADATA")).unlink()
    out = launch(capsys, *flags("2"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: No checkpoint that every run of the group has restores" in out.stderr
    assert str(workdir / run / "checkpoints") in out.stderr and "step 35 of" in out.stderr


def test_scanned_steps_match_single_steps(synthetic_data_dir):
    """Several steps in one dispatch (lax.scan) train as one step per dispatch does. Compared
    through losses and norms: a bias that feeds batch norm has an exactly-zero gradient, whose
    float noise Adam turns into +-lr steps, so single parameters may differ by design."""
    run_config = _run_config(synthetic_data_dir)
    fns = _fns(run_config)
    dataset, perm = _dataset(synthetic_data_dir)
    state = fns.create(jax.random.PRNGKey(0), learning_rate=1e-3, moment_weight=0.1)
    singles = []
    for i in range(5):
        state, metrics = fns.steps(state, dataset, perm, i, i, num_steps=1)
        singles.append(jax.device_get(jax.tree.map(lambda x: x[0], metrics)))
    scanned_state = fns.create(jax.random.PRNGKey(0), learning_rate=1e-3, moment_weight=0.1)
    scanned_state, scanned = fns.steps(scanned_state, dataset, perm, 0, 0, num_steps=5)
    assert scanned["d/loss"].shape == (5,)
    for key in ("d/loss", "g/adv_loss", "g/moment_mean_gap", "g/param_norm", "d/param_norm"):
        np.testing.assert_allclose(scanned[key], [m[key] for m in singles], rtol=1e-3)
    assert int(scanned_state.step) == int(state.step) == 5


def _same_training(workdir_a, workdir_b, run, rtol):
    """Same logged train losses, accuracies and moment gaps, to `rtol`; validation metrics of G
    with batch statistics to 10 `rtol`, its eval metrics to 50 `rtol` (the Frechet and kernel
    distances of 100 samples amplify float noise). Left out: gradient, update and parameter
    norms (sums of squares over 13 tensors, more sensitive than the losses), and every metric
    of G sampled with its moving averages, which track the pre-norm biases (see
    `_same_networks`) and drift apart with them (val gaps 0.4% and eval distances 2.6% apart
    after 10 and 40 steps at lr 0.003). GAN training amplifies float differences step after
    step: compare runs of a few tens of steps."""
    def logged(workdir):
        return {(r["split"], r["step"]): r for r in log.read_metrics(str(workdir))
                if r["run"] == run and r["split"] in ("train", "val", "eval")}
    a, b = logged(workdir_a), logged(workdir_b)
    assert a.keys() == b.keys() and len(a) > 4
    for point, record in a.items():
        for key, value in record.items():
            if isinstance(value, float) and not key.endswith("_norm") and (
                    not key.startswith(("eval_movavg/", "moving_avg/"))):
                tol = rtol * {"train": 1, "val": 10, "eval": 50}[point[0]]
                assert value == pytest.approx(b[point][key], rel=tol, abs=1e-6), (
                    run, point, key)


def _same_networks(fns, a, b, images, atol):
    """Same G samples (batch statistics) and D logits. Compared as functions: a bias that feeds
    batch norm has an exactly-zero gradient, whose float noise Adam turns into +-lr steps, so
    such parameters may differ without changing these outputs (G's moving averages track them,
    hence no comparison of moving-average samples here)."""
    z = gan.fixed_z(tiny_config(""), 10, stream=0)
    np.testing.assert_allclose(gan.sample(a, z, g_model=fns["g"], bn_mode="batch_stats"),
                               gan.sample(b, z, g_model=fns["g"], bn_mode="batch_stats"),
                               atol=atol)
    logits = [fns["d"].apply({"params": s.d_params, "batch_stats": s.d_batch_stats}, images,
                             deterministic=True, mutable=["batch_stats"])[0] for s in (a, b)]
    np.testing.assert_allclose(*logits, atol=atol)


def test_sweep_members_match_standalone_runs_and_a_diverged_member_is_frozen(
        synthetic_data_dir, tmp_path):
    """One vmapped sweep of four runs (two seeds, each with its own data order, and a moment
    weight of NaN, whose every step is non-finite), interrupted after an epoch as if killed
    between two members' saves (one member lacks the last checkpoint) and resumed: it resumes
    as one sweep from the step every member has, and ends bit-identical to a straight sweep,
    and like a straight standalone run of a healthy member. (Learning rates per member under
    vmap: tests/test_optim.py.)"""
    def sweep_runs(epochs):
        config = tiny_config(synthetic_data_dir, epochs=epochs, learning_rates="(0.003,)",
                             max_skipped_steps="3", batch_size="20",  # 10 steps an epoch
                             seeds="(0,1)", data_seed="-1", checkpoint_every_steps="5",
                             eval_samples="0")  # the sweep's eval metrics: at the end
        config.moment_weights = (0.1, float("nan"))
        return grid.expand_grid(config)

    gan.train_runs(sweep_runs("1"), str(tmp_path / "sweep"), sweep_mode="vmap")
    behind = sweep_runs("1")[1].run.name
    shutil.rmtree(tmp_path / "sweep" / behind / "checkpoints" / "10")
    runs = sweep_runs("2")
    sweep = gan.train_runs(runs, str(tmp_path / "sweep"), sweep_mode="vmap")
    straight = gan.train_runs(runs, str(tmp_path / "straight"), sweep_mode="vmap")
    for a, b in zip(sweep, straight):
        _assert_identical(a, b)
    restarts = [r for r in log.read_metrics(str(tmp_path / "sweep"))
                if r["split"] == "meta" and r["resumed"]]
    assert {(r["step"], r["sweep_members"]) for r in restarts} == {(5, 4)}
    healthy = [r for r in runs if r.run.moment_weight == 0.1]
    broken = [r for r in runs if r.run.moment_weight != 0.1]
    compared = [r for r in healthy if r.run.seed == 1]
    g_model, d_model = gan.make_models(runs[0])
    images = data.to_float(data.mnist_splits(synthetic_data_dir, 100).val_images[:20])
    assert len(runs) == 4 and len(compared) == 1
    for run in compared:
        alone = gan.train_and_evaluate(run, str(tmp_path / "alone"))
        _same_training(tmp_path / "sweep", tmp_path / "alone", run.run.name, rtol=3e-4)
        _same_networks({"g": g_model, "d": d_model}, sweep[runs.index(run)], alone, images,
                       atol=1e-3)
        assert int(sweep[runs.index(run)].skipped) == 0
    records = log.read_metrics(str(tmp_path / "sweep"))
    for run in broken:
        name = run.run.name
        state = sweep[runs.index(run)]
        fresh = _fns(run).create(jax.random.fold_in(jax.random.PRNGKey(run.run.seed), 0),
                                    learning_rate=run.run.learning_rate, moment_weight=0.0)
        assert int(state.skipped) == 3 and int(state.step) == 20
        np.testing.assert_array_equal(jax.tree.leaves(state.g_params)[0],
                                      jax.tree.leaves(fresh.g_params)[0])
        events = [r for r in records if r["run"] == name and r["split"] == "event"]
        assert len(events) == 1 and "diverged" in events[0]["message"]
        assert not [r for r in records if r["run"] == name and r["split"] == "val"]
        assert any(name in line for line in report.divergence_lines(records))
    # The eval metrics of a sweep, per member, in both batch-norm modes.
    fns = gan.build(runs[0], sharding.make_mesh(), len(runs))
    stacked = loop.tree_fns(sharding.make_mesh(), len(runs))["stack"](*sweep)
    evals = gan.evaluate_samples(fns, stacked, gan.fixed_inputs(runs[0], 100, stream=2),
                                 tiny_config(synthetic_data_dir), len(runs))
    assert len(evals) == 4 and all(np.isfinite(e["eval/fd"]) and np.isfinite(
        e["eval_movavg/trace_ratio"]) for e in evals)
    # Each healthy member logged like a standalone run, into its own folder.
    for run in healthy:
        assert (tmp_path / "sweep" / run.run.name / "samples" / "step_000020.npz").exists()
        assert [r["epoch"] for r in records
                if r["run"] == run.run.name and r["split"] == "val"] == [1, 2]


def test_a_folder_of_images_trains_end_to_end(synthetic_data_dir, tmp_path, capsys):
    """Any folder of images through the launcher (`data_format=image_folder`): here 56x56 RGB
    PNGs in two subfolders, read as 28x28 grayscale, so the tiny study's compiled step serves.
    It trains, validates on held-out images, writes samples and a report that says why the
    MNIST evaluator's metrics are left out."""
    from PIL import Image

    folder = tmp_path / "pictures"
    splits = data.mnist_splits(synthetic_data_dir, 0)
    for i, image in enumerate(splits.train_images[:220, ..., 0]):
        (folder / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").resize((56, 56)).save(
            folder / f"part{i % 2}" / f"{i:03d}.png")
    workdir = tmp_path / "w"
    flags = tiny_flags(str(folder), data_format="image_folder", val_examples="20",
                       epochs="1")
    result = launch(capsys, *flags, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    records = log.read_metrics(str(workdir))
    run = grid.expand_grid(tiny_config(str(folder)))[0].run.name
    val = [r for r in records if r["split"] == "val" and r["run"] == run]
    assert [r["step"] for r in val] == [20] and np.isfinite(val[0]["batch_stats/mean_gap"])
    assert not [r for r in records if r["split"] == "eval"]
    assert (workdir / run / "samples" / "step_000020.npz").exists()
    text = open(workdir / report.REPORT_FILE).read()
    assert "not MNIST" in text and "are left out" in text
    # A folder too small for one batch is refused before anything is written.
    small = tmp_path / "small"
    small.mkdir()
    Image.new("L", (28, 28)).save(small / "one.png")
    result = launch(capsys, *tiny_flags(str(small), data_format="image_folder"),
                    f"--workdir={tmp_path / 'w2'}")
    assert result.returncode == 2 and "fewer than one batch" in result.stderr
    assert not (tmp_path / "w2").exists()
