"""Stable Diffusion fine-tuning on a tiny random pipeline (`jaxgen.sd.make_tiny_pipeline`) and a
dozen generated shapes: one run through the launcher's path is shared by the tests (the train
step compiles once per process), which check its logs, samples and report, exact resume, that
the loss falls on a repeated batch, and that diffusers loads and runs the saved pipeline."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxgen import checkpoint, experiment, grid, image_folder, log, sd, sharding
from jaxgen import config as config_lib
from jaxgen.errors import UserError
from jaxgen.trainers import sd_finetune

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments", "configs")
RUN = "lr0.001_seed0"


def tiny_config(pretrained: str, data_dir: str, **overrides: str):
    config = config_lib.load_config("sd_finetune_tiny", CONFIGS_DIR)
    # 12 pairs: 4 held out, 8 in 2 batches; 2 epochs; evaluated and saved every 2 steps.
    config_lib.apply_overrides(config, {"pretrained": pretrained, "data_dir": data_dir,
                                        "epochs": "2", "eval_every_steps": "2",
                                        "checkpoint_every_steps": "2", **overrides})
    return config


@pytest.fixture(scope="module")
def trained(tiny_sd, tmp_path_factory):
    pretrained = tiny_sd["pretrained"]
    config = tiny_config(pretrained, tiny_sd["data_dir"])
    workdir = str(tmp_path_factory.mktemp("sd") / "workdir")
    experiment.run_experiment(config, workdir)
    run = grid.expand_grid(config_lib.read_config(workdir))[0]
    # Resuming a finished run trains nothing and returns its final state.
    state = sd_finetune.train_and_evaluate(run, workdir)
    return {"workdir": workdir, "run": run, "state": state, "pretrained": pretrained}


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(a)),
                                                    jax.tree.leaves(jax.device_get(b)),
                                                    strict=True))


def test_run_logs_evaluates_samples_and_reports(trained):
    workdir, state = trained["workdir"], trained["state"]
    assert int(state.step) == 4 and int(state.skipped) == 0
    records = log.read_metrics(workdir)
    meta = [r for r in records if r["split"] == "meta"][0]
    assert meta["steps_per_epoch"] == 2 and meta["train_examples"] == 8
    assert meta["cached_latents"] is False  # random flips: the VAE encodes every batch
    steps, losses = log.series(records, RUN, "train", "loss")
    assert list(steps) == [2, 4] and np.isfinite(losses).all()
    val_steps, val = log.series(records, RUN, "val", "loss")
    assert list(val_steps) == [2, 4] and np.isfinite(val).all() and val[0] != val[1]
    _, lr = log.series(records, RUN, "train", "lr")
    assert lr[0] < lr[1] == pytest.approx(1e-3, rel=1e-4)  # warmup over 2 steps, then the peak
    samples = os.path.join(workdir, RUN, "samples")
    with np.load(os.path.join(samples, "step_000004.npz")) as f:
        assert f["images"].shape == (2, 16, 16, 3) and f["images"].dtype == np.uint8
        assert list(f["prompts"]) == ["a red square", "a blue circle"]
    assert os.path.isfile(os.path.join(samples, "step_000002.png"))
    report = open(os.path.join(workdir, "report.md")).read()
    assert f"| {RUN} | 4 | " in report and f"`{RUN}/pipeline`" in report
    assert f"![{RUN} step 4]({RUN}/samples/step_000004.png)" in report


def test_resumed_run_equals_a_straight_one(trained):
    """A run stopped after its step-2 checkpoint and resumed ends bit for bit where the straight
    run ended (data order, flips, noise and timesteps are functions of the step)."""
    copy = trained["workdir"] + "_resumed"
    shutil.copytree(trained["workdir"], copy)
    shutil.rmtree(os.path.join(copy, RUN, "checkpoints", "4"))
    shutil.rmtree(os.path.join(copy, RUN, "pipeline"))
    resumed = sd_finetune.train_and_evaluate(trained["run"], copy)
    assert int(resumed.step) == 4
    assert _leaves_equal(resumed, trained["state"])
    assert os.path.isfile(os.path.join(copy, RUN, "pipeline", "model_index.json"))


def test_loss_falls_on_a_repeated_batch(trained):
    """25 steps on one batch lower its loss at fixed noise and timesteps (as the validation loss
    measures it) by a fifth; the run's own compiled functions, so nothing compiles again."""
    run = trained["run"]
    static, mesh = sd_finetune.static_config(run), sharding.make_mesh()
    rep = sharding.replicated(mesh)
    data = sd_finetune.prepare_data(static)
    fns = sd_finetune.build(run, mesh)  # the schedule has its own length
    pipeline, params, _, _ = sd_finetune.pretrained(run.pretrained, run.bf16)
    vae_params = jax.device_put(params["vae"], rep)
    batch = sd_finetune.put_batch(sd_finetune.make_batch(data, run, data.train, 0, 2), mesh)
    rows = data.train[:run.batch_size]
    mean, _ = sd_finetune.frozen_fns(run.pretrained, run.bf16, run.fast_compile)[
        "encode_images"](params["vae"], image_folder.batch_images(data.folder, rows, 16))
    fixed = jax.device_put({
        **data.val_inputs, "latents": np.asarray(mean) * pipeline.vae.config.scaling_factor,
        "embeddings": data.embeddings[data.caption_index[rows]]}, rep)
    state = fns.create(jax.random.PRNGKey(1), params["unet"], learning_rate=1e-3)
    before = float(fns.val_loss(state, fixed))
    for _ in range(25):
        state, metrics = fns.step(state, batch, vae_params)
    after = float(fns.val_loss(state, fixed))
    assert np.isfinite(float(metrics["loss"])) and after < 0.8 * before, (before, after)


def test_saved_pipeline_loads_and_generates_with_diffusers(trained):
    from diffusers import FlaxStableDiffusionPipeline
    from flax.jax_utils import replicate
    from flax.training.common_utils import shard

    export = os.path.join(trained["workdir"], RUN, "pipeline")
    with sd.quiet():
        pipeline, params = FlaxStableDiffusionPipeline.from_pretrained(
            export, safety_checker=None, feature_extractor=None)
    run = trained["run"]
    original = sd_finetune.pretrained(run.pretrained, run.bf16)[1]  # as loaded for training
    state = trained["state"]
    # The UNet saved is the moving average; the frozen networks are saved unchanged.
    assert _leaves_equal(params["unet"], state.ema_params)
    assert not _leaves_equal(params["unet"], state.params)
    assert not _leaves_equal(params["unet"], original["unet"])
    for name in ("vae", "text_encoder"):
        assert _leaves_equal(params[name], original[name])
    # jit=True: diffusers compiles the whole generation once (pmap over the first axis).
    prompt_ids = shard(pipeline.prepare_inputs(["a red square"]))
    images = pipeline(prompt_ids, replicate(params), jax.random.split(jax.random.PRNGKey(0), 1),
                      num_inference_steps=2, jit=True).images
    assert images.shape == (1, 1, 16, 16, 3) and np.isfinite(images).all()
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_pretrained_folder_is_checked_and_its_weight_format_detected(tmp_path):
    with pytest.raises(UserError, match="huggingface-cli download"):
        sd.weights_are_pytorch("")
    with pytest.raises(UserError, match="no model_index.json"):
        sd.weights_are_pytorch(str(tmp_path))
    (tmp_path / "model_index.json").write_text(json.dumps({}))
    for component in sd.COMPONENTS:
        (tmp_path / component).mkdir()
    with pytest.raises(UserError, match="holds no weights"):
        sd.weights_are_pytorch(str(tmp_path))
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert sd.weights_are_pytorch(str(tmp_path))  # loaded with from_pt=True
    (tmp_path / "unet" / "diffusion_flax_model.msgpack").write_bytes(b"")
    assert not sd.weights_are_pytorch(str(tmp_path))


def test_checkpoint_holds_only_the_trained_state(trained):
    """Orbax keeps the UNet, its optimizer state and average; the frozen networks are not in it."""
    manager = checkpoint.make_manager(os.path.join(trained["workdir"], RUN, "checkpoints"))
    assert manager.all_steps() == [2, 4]
    manager.close()
    state = trained["state"]
    assert set(state.params) == set(state.ema_params) == {
        "conv_in", "time_embedding", "down_blocks_0", "up_blocks_0", "conv_norm_out", "conv_out"}


def test_pytorch_weights_added_to_the_saved_pipeline_load_in_torch(trained, tmp_path):
    """Where torch is installed: `sd.add_pytorch_weights` makes the saved folder a PyTorch
    pipeline too, with the fine-tuned UNet's weights."""
    torch = pytest.importorskip("torch")
    from diffusers import StableDiffusionPipeline

    folder = str(tmp_path / "pipeline")
    shutil.copytree(os.path.join(trained["workdir"], RUN, "pipeline"), folder)
    sd.add_pytorch_weights(folder)
    with sd.quiet():
        pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                           feature_extractor=None)
    kernel = np.asarray(trained["state"].ema_params["conv_in"]["kernel"])  # HWIO
    np.testing.assert_allclose(pipeline.unet.conv_in.weight.detach().numpy(),
                               kernel.transpose(3, 2, 0, 1), rtol=1e-6)
    with torch.no_grad(), sd.quiet():
        images = pipeline("a red square", num_inference_steps=2, height=16, width=16,
                          output_type="np").images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()


def test_a_size_beyond_memory_is_refused_before_compiling_and_0_is_the_pipelines_own(trained):
    """The tiny pipeline (16 px; its VAE halves them) at SD's 512: 256 x 256 latents, whose
    self-attention alone needs terabytes. Refused with an estimate and the pipeline's own size;
    resolution 0 picks that size."""
    from jaxgen.errors import UserError

    big = grid.expand_grid(tiny_config(trained["pretrained"], "", resolution="512"))[0]
    with pytest.raises(UserError, match=r"resolution=512 .* needs about [\d,]+ GiB, more than "
                                        r".*this pipeline's own is 16"):
        sd_finetune.check_config(big)
    native = grid.expand_grid(tiny_config(trained["pretrained"], "", resolution="0"))[0]
    sd_finetune.check_config(native)
    assert sd.training_resolution(native) == 16
    # The run that died allocating 770 GB: its largest attention, estimated at 1 TiB.
    assert sd.attention_bytes(trained["pretrained"], 512, 4) == 2**40
