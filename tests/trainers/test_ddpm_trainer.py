"""The DDPM trainer end to end on a tiny UNet and synthetic data: the experiment runs, logs its
validation loss, bits/dim and sample metrics, writes its report, resumes exactly, and learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS_DIR

from jaxgen import checkpoint, data, experiment, grid, log, sharding
from jaxgen import config as config_lib
from jaxgen.errors import UserError
from jaxgen.trainers import diffusion as trainer

TINY_DDPM = {"model.channels": "8", "model.channel_mult": "(1,)", "model.num_res_blocks": "1",
             "model.attention_resolutions": "(28,)", "model.norm_groups": "4",
             "diffusion.timesteps": "20", "batch_size": "8", "train_examples": "32",
             "val_examples": "20", "epochs": "2", "schedules": "('cosine',)",
             "learning_rates": "(0.002,)", "seeds": "(0,)", "optimizer.schedule.warmup_steps": "2",
             "ema_half_life": "50.0", "sampler.ddpm_steps": "3", "sampler.ddim_steps": "3",
             "sample_batch": "10", "num_fixed_samples": "20", "eval_every_epochs": "1",
             "bpd_examples": "10", "bpd_terms": "4", "eval_samples": "20",
             "eval_reference": "100", "log_every_steps": "2", "tensorboard": "False"}


def tiny(data_dir: str, **overrides):
    config = config_lib.load_config("ddpm_mnist", CONFIGS_DIR)
    config_lib.apply_overrides(config, {**TINY_DDPM, **overrides})
    config.data_dir = data_dir
    return config


def final_params(workdir: str, config):
    run = grid.expand_grid(config)[0]
    fns = trainer.build(run)
    state = fns.create(jax.random.PRNGKey(0), learning_rate=0.0)
    manager = checkpoint.make_manager(f"{workdir}/{run.run.name}/checkpoints")
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_like(state))
    manager.close()
    return restored


@pytest.fixture(scope="module")
def runs(synthetic_data_dir, tmp_path_factory):
    """The tiny experiment trained straight for 2 epochs, and for 1 epoch then resumed to 2."""
    straight, resumed = (str(tmp_path_factory.mktemp(n)) for n in ("straight", "resumed"))
    experiment.run_experiment(tiny(synthetic_data_dir), straight)
    experiment.run_experiment(tiny(synthetic_data_dir, epochs="1"), resumed)
    experiment.run_experiment(tiny(synthetic_data_dir), resumed)
    return straight, resumed


def test_logs_validation_bits_per_dim_and_sample_metrics(runs, synthetic_data_dir):
    records = log.read_metrics(runs[0])
    val = [r for r in records if r["split"] == "val"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in val] == [4, 8] and [r["step"] for r in evals] == [4, 8]
    last = evals[-1]
    assert last["eval/bpd"] == pytest.approx(
        last["eval/bpd_prior"] + last["eval/bpd_decoder"] + last["eval/bpd_kl"], rel=1e-4)
    assert 0 < last["eval/bpd"] < 20 and last["eval/bpd_se"] > 0
    assert {"eval/fd", "eval/coverage", "eval/precision", "eval/recall"} <= set(last)
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["skipped"] == 0 and train[-1]["lr"] > 0
    run_dir = f"{runs[0]}/schedcosine_lr0.002_seed0"
    samples = np.load(f"{run_dir}/samples/step_000008.npz")
    assert set(samples) == {"ddpm", "ddim"} and samples["ddim"].shape == (20, 28, 28, 1)
    report = open(f"{runs[0]}/report.md").read()
    assert "bits/dim" in report and "| schedcosine_lr0.002 | 1 |" in report


def test_resume_is_exact(runs):
    config = tiny("")
    straight, resumed = (final_params(w, config) for w in runs)
    assert int(straight.step) == int(resumed.step) == 8
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ours = [r for r in log.read_metrics(runs[1]) if r["split"] == "eval"]
    theirs = [r for r in log.read_metrics(runs[0]) if r["split"] == "eval"]
    assert ours[-1]["eval/bpd"] == theirs[-1]["eval/bpd"]


def test_validation_loss_falls_on_a_repeated_batch(synthetic_data_dir, runs):
    run = grid.expand_grid(tiny(synthetic_data_dir))[0]
    fns = trainer.build(run)
    sched = trainer.diffusion.make_schedule("cosine", 20)
    # The shapes and shardings of the runs' data, so that the compiled functions are reused.
    images = data.mnist_splits(synthetic_data_dir, 20).val_images
    rep = sharding.replicated(sharding.make_mesh())
    dataset, images, t, noise, sched = jax.device_put((
        {"images": np.concatenate([images[:8]] * 4)}, images, jnp.arange(20) % 20,
        jax.random.normal(jax.random.PRNGKey(1), (20, 28, 28, 1)), sched), rep)
    state = fns.create(jax.random.PRNGKey(0), learning_rate=0.002)
    before = float(fns.val_loss(state.params, images, t, noise, sched))
    state, _ = fns.steps(state, dataset, jnp.arange(32), 0, sched, num_steps=1)
    for _ in range(24):
        state, metrics = fns.steps(state, dataset, jnp.arange(32), 0, sched, num_steps=1)
    after = float(fns.val_loss(state.params, images, t, noise, sched))
    assert after < 0.7 * before


@pytest.mark.parametrize("field,value,message", [
    ("bpd_terms", "20", "must be in 1..T-1"), ("eval_samples", "15", "not a multiple"),
    ("sweep_mode", "vmap", "one after another"), ("model.norm_groups", "3", "does not divide"),
    ("sampler.ddim_steps", "21", "sampling steps 21"), ("schedules", "('sigmoid',)",
                                                        "unknown noise schedule")])
def test_bad_configs_are_refused_before_training(field, value, message):
    config = tiny("", **{field: value})
    with pytest.raises(UserError, match=message):
        for run in grid.expand_grid(config):
            trainer.check_config(run)
