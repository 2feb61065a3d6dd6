"""The conditional GAN through the shared GAN trainer (a module of its own, so that the parallel
test workers can run it beside the StyleGAN's tests)."""

import jax.numpy as jnp
from test_gan_families import _setup

from jaxgen.trainers import gan


def test_conditional_sampling_returns_the_asked_digits(synthetic_data_dir):
    run, fns, dataset, state, perm = _setup("cgan_mnist", synthetic_data_dir)
    inputs = gan.fixed_inputs(run, 20, stream=2)
    assert inputs["labels"].tolist() == [i % 10 for i in range(20)]
    images = fns.generate["moving_avg"](state, inputs)
    assert images.shape == (20, 28, 28, 1)
    # Same z, other digits asked for: other images.
    other = fns.generate["moving_avg"](state, {**inputs, "labels": (inputs["labels"] + 1) % 10})
    assert float(jnp.abs(images - other).max()) > 1e-4
    state, metrics = fns.steps(state, dataset, perm, 0, 0, num_steps=1)
    assert metrics["finite"][0] == 1.0 and "balance/loss_ratio" in metrics
    # The evaluation asks for every digit: conditional metrics beside the unconditional ones.
    (evals,) = gan.evaluate_samples(fns, state, gan.fixed_inputs(run, 100, stream=2), run)
    assert 0 <= evals["eval/cond_acc"] <= 1 and "eval/fd_3" in evals
    assert "eval/fd" in evals and "eval_movavg/cond_acc" in evals  # both batch-norm modes
