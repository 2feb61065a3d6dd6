"""Where one GAN evaluation round spends its time, part by part, against the training it sits in.

    python benchmarks/evaluation.py [--exp=moment_stab_mnist_cpu] [--repeats=3]

For one run of the experiment (its DCGAN at initialization: the cost does not depend on the
weights) and its protocol (`eval_samples` samples in each batch-norm mode against
`eval_reference` MNIST test images), times after warm-up:

    generate       G's samples in one batch-norm mode (`fns.generate`)
    classifier     the evaluator classifier's features and logits of those samples
    fd             Gaussian fit (float64) and the Frechet distance
    kid            KID's 100 subsets of 1,000, the reference's own term kept (as in training)
    knn            precision and recall: the samples' k-NN radii and the two ball tests
    rest           class coverage and pixel moments
    round          one whole round as the trainer runs it (`gan.evaluate_samples`), every mode

and prints the round's share of a run's wall time at the experiment's cadence:
round / (round + steps between evaluations x the step's time, measured here too).
Random images stand in for the reference (the timings do not depend on the pixels).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402

from jaxgen import config as config_lib  # noqa: E402
from jaxgen import grid, sharding  # noqa: E402
from jaxgen.cli import guarded, parse_flags  # noqa: E402
from jaxgen.evaluator import metrics  # noqa: E402
from jaxgen.trainers import gan  # noqa: E402


def best_of(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str]) -> None:
    flags, _ = parse_flags(argv, ("exp", "repeats"))
    exp, repeats = flags.get("exp", "moment_stab_mnist_cpu"), int(flags.get("repeats", 3))
    config = config_lib.load_config(exp, train_step.CONFIGS_DIR)
    run_config = grid.expand_grid(config)[0]
    mesh = sharding.make_mesh(1, jax.devices())
    fns = gan.build(run_config, mesh, 0)
    state = fns.create(jax.random.PRNGKey(0), learning_rate=1e-3, moment_weight=0.1)
    n, n_ref = config.eval_samples, config.eval_reference
    rng = np.random.default_rng(0)
    ref_images = jnp.asarray(rng.uniform(-1, 1, (n_ref, 28, 28, 1)), jnp.float32)
    reference = metrics.make_reference(ref_images)
    inputs = gan.fixed_inputs(run_config, n, 0)
    mode = gan.sampling_modes(run_config)[0]
    images = fns.generate[mode](state, inputs)
    features, logits = metrics.embed(images)

    parts = {
        "generate": lambda: fns.generate[mode](state, inputs),
        "classifier": lambda: metrics.embed(images),
        "fd": lambda: metrics.frechet_distance(*metrics.gaussian_stats(features), reference.mu,
                                               reference.sigma),
        "kid": lambda: metrics.reference_kid(features, reference),  # as the trainer runs it
        "knn": lambda: metrics.precision_recall(reference.features, features,
                                                real_radii=reference.radii),
        "rest": lambda: (metrics.class_coverage(logits), metrics.pixel_moments(images)),
    }
    seconds = {name: best_of(fn, repeats) for name, fn in parts.items()}
    modes = len(gan.sampling_modes(run_config))

    def one_round():
        reference_of = gan.eval_reference  # the trainer reads its reference once per process
        gan.eval_reference = lambda data_dir, k: reference
        try:
            return gan.evaluate_samples(fns, state, inputs, run_config)
        finally:
            gan.eval_reference = reference_of

    seconds["round"] = best_of(one_round, repeats)
    step_s = train_step.jax_timer(config, mesh, 0)
    step_s(3)
    step = min(step_s(10) for _ in range(repeats))
    # MNIST's 60,000 training images less the validation split, or the experiment's subset
    per_epoch = (config.train_examples or 60_000 - config.val_examples) // config.batch_size
    every = config.get("eval_every_steps", 0) or config.eval_every_epochs * per_epoch
    share = seconds["round"] / (seconds["round"] + every * step)
    print(f"exp={exp} eval_samples={n} eval_reference={n_ref} bn_modes={modes} "
          f"backend={jax.default_backend()} repeats={repeats}")
    for name, s in seconds.items():
        print(f"{name:10s} {s * 1e3:9.1f} ms" + ("  (per batch-norm mode)"
                                                 if name != "round" else f"  ({modes} modes)"))
    print(f"step_ms={step * 1e3:.1f} steps_between_evals={every} "
          f"eval_share_of_wall_time={share:.1%}")


if __name__ == "__main__":
    guarded(lambda: main(sys.argv[1:]))
