"""The stability switches and detectors, end to end through the GAN trainer (tiny runs)."""

import os

import jax
import numpy as np
import pytest
from conftest import CONFIGS_DIR, TINY

from jaxgen import checkpoint, experiment, grid, log, report
from jaxgen import config as config_lib
from jaxgen.errors import UserError
from jaxgen.trainers import gan

# The feed-forward GAN at a tiny size: compiles in a second or two per variant.
TINY_MLP = {**{k: v for k, v in TINY.items() if not k.startswith("model.")},
            "model.g_hidden": "16", "model.d_hidden": "16", "steps_per_dispatch": "5"}


def tiny_mlp(data_dir, **overrides):
    config = config_lib.load_config("moment_stab_mnist_mlp", CONFIGS_DIR)
    config_lib.apply_overrides(config, {**TINY_MLP, **overrides})
    config.data_dir = data_dir
    return config


def test_variants_cross_the_grid_and_apply_their_overrides(synthetic_data_dir):
    config = tiny_mlp(synthetic_data_dir, learning_rates="(0.001,0.01)")
    config.variants = ("base:", "elu:model.activation=elu,model.d_hidden=8",
                       "sched:g_optimizer.schedule.name=cosine,moment_weights=(0.0,0.1)")
    runs = grid.expand_grid(config)
    names = [r.run.name for r in runs]
    assert names[:3] == ["base_lr0.001_moment0.1_seed0", "base_lr0.01_moment0.1_seed0",
                         "elu_lr0.001_moment0.1_seed0"]
    assert len(runs) == 2 + 2 + 4  # the last variant sets its own moment weights
    assert runs[2].model.activation == "elu" and runs[2].model.d_hidden == 8
    assert runs[0].model.activation == "leaky_relu"
    assert runs[-1].g_optimizer.schedule.name == "cosine"
    assert grid.parse_variant("w:model.d_channels=(4,8),batch_size=5") == (
        "w", {"model.d_channels": "(4,8)", "batch_size": "5"})
    for bad, message in (("x:model.activaton=elu", "Did you mean"),
                         ("x:batch_size", "is not key=value"), (":batch_size=3", "no usable name")):
        config.variants = (bad,)
        with pytest.raises(UserError, match=message):
            grid.expand_grid(config)
    # Settings that cannot train are refused before anything runs, naming the field.
    for bad, message in (("a:augment.translate=20", "augment.translate=20 is too large"),
                         ("a:model.norm=layer", "model.norm=layer"),
                         ("a:g_optimizer.schedule.name=cyclical", "schedule.decay_steps=0")):
        config.variants = (bad,)
        with pytest.raises(UserError, match=message):
            gan.check_config(grid.expand_grid(config)[0])


def test_a_learning_rate_of_ten_is_caught_and_reported(synthetic_data_dir, tmp_path):
    """lr 10 drives the study's losses into the thousands without a NaN: each such step is
    skipped, and after max_skipped_steps the run is frozen at its last good state, with the
    cause named."""
    config = config_lib.load_config("moment_stab_mnist", CONFIGS_DIR)
    config_lib.apply_overrides(config, {**TINY, "learning_rates": "(10.0,)",
                                        "max_skipped_steps": "3"})
    config.data_dir = synthetic_data_dir
    workdir = str(tmp_path / "w")
    experiment.run_experiment(config, workdir)
    records = log.read_metrics(workdir)
    [event] = [r for r in records if r["split"] == "event"]
    assert event["diverged"] and "losses above stability.max_loss=100" in event["message"]
    assert event["step"] <= 10  # caught within the first logging intervals
    text = open(os.path.join(workdir, report.REPORT_FILE)).read()
    assert "## Diverged runs" in text and event["message"] in text
    # The last checkpoint holds a state whose losses were all finite and below the limit.
    run = grid.expand_grid(config)[0]
    manager = checkpoint.run_manager(workdir, run.run.name)
    state = checkpoint.restore_latest(manager, checkpoint.abstract_like(
        gan.build(run).create(
            jax.random.PRNGKey(0), learning_rate=10.0, moment_weight=0.1)))
    manager.close()
    assert int(state.skipped) == 3
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.g_params))


def test_early_stopping_restores_the_best_checkpoint(synthetic_data_dir, tmp_path):
    """With a min_delta no evaluation can beat, the first evaluation stays the best, the run
    stops after `patience` more, and its final state is the first epoch's."""
    config = tiny_mlp(synthetic_data_dir, epochs="5", eval_every_epochs="1", **{
        "stability.early_stop_metric": "eval/fd", "stability.patience": "2",
        "stability.min_delta": "1e9"})
    workdir = str(tmp_path / "w")
    run = grid.expand_grid(config)[0]
    final = gan.train_runs([run], workdir)[0]
    records = log.read_metrics(workdir)
    [event] = [r for r in records if r["split"] == "event"]
    assert event["early_stopped"] and event["step"] == 60  # epochs of 20 steps: 1 best, 2 bad
    assert "the best" in event["message"] and "at step 20" in event["message"]
    assert [r["epoch"] for r in records if r["split"] == "eval"] == [1, 2, 3]
    best = checkpoint.run_manager(workdir, run.run.name, 1, best=True)
    assert best.latest_step() == 20
    restored = checkpoint.restore(best, 20, checkpoint.abstract_like(final))
    best.close()
    for a, b in zip(jax.tree.leaves(final.g_params), jax.tree.leaves(restored.g_params)):
        np.testing.assert_array_equal(a, b)
    # Resuming does not train the stopped run again.
    again = gan.train_runs([run], workdir)[0]
    assert int(again.early_stop["stopped"]) == 1
    assert len([r for r in log.read_metrics(workdir) if r["split"] == "eval"]) == 3


def test_a_variant_grid_reports_rankings_a_heatmap_and_schedules(synthetic_data_dir, tmp_path):
    config = tiny_mlp(synthetic_data_dir)
    config.variants = (
        "base:", "tricks:g_optimizer.schedule.name=cosine,g_optimizer.schedule.warmup_steps=5,"
        "augment.translate=2,augment.fake=True,g_optimizer.clip_norm=1.0,"
        "d_optimizer.l2=0.001,model.d_dropout=0.3")
    workdir = str(tmp_path / "w")
    experiment.run_experiment(config, workdir)
    records = log.read_metrics(workdir)
    steps, lrs = log.series(records, "tricks_lr0.001_moment0.1_seed0", "train", "g/lr")
    assert lrs[0] < lrs[1] and lrs[-1] < 1e-4  # warmup, then the cosine down to 0
    _, base_lrs = log.series(records, "base_lr0.001_moment0.1_seed0", "train", "g/lr")
    np.testing.assert_allclose(base_lrs, 0.001)
    _, penalty = log.series(records, "tricks_lr0.001_moment0.1_seed0", "train", "d/penalty")
    assert (penalty > 0).all()
    text = open(os.path.join(workdir, report.REPORT_FILE)).read()
    assert "## Techniques ranked" in text and "| 1 | " in text
    assert "| base_lr0.001_moment0.1 |" in text and "(baseline)" in text
    assert "## Learning-rate schedules" in text and "## Instability monitor" in text
    figures = os.listdir(os.path.join(workdir, report.FIGURES_DIR))
    assert "technique_heatmap.png" in figures and "lr_schedules.png" in figures
    assert report.run_grid(config) == [[f"{v}_lr0.001_moment0.1_seed0"]
                                       for v in ("base", "tricks")]
