"""Instability caught while training, shared by every trainer.

Inside the jitted step (all pure `jnp`, so a vmapped sweep checks each member on its own):
- `bad_step`: a step whose losses or gradients are not finite, or whose loss exceeds `max_loss`
  (a sigmoid cross-entropy of 100 means logits near +-100: D certain beyond float precision, as
  an lr of 10 produces without ever reaching NaN), is *bad*. `guard_update` (the trainers'
  steps) or `guard` keeps the old state for a bad step (parameters and optimizer state
  unchanged) and the trainer counts it; after `max_skipped_steps`
  bad steps the run is frozen at its last good state and its trainer reports it as diverged.
- `observe`: loss-spike and gradient-explosion detectors, z-scores of the watched metrics against
  exponential moving averages of their mean and variance (after `spike_warmup` steps), and
  discriminator saturation (D right on nearly every real and fake image).

On the host, after each evaluation:
- `early_stop`: patience and minimum delta on a validation metric; the trainer keeps the best
  checkpoint and restores it when the run stops.
- `collapse_alert`: mode collapse seen in the evaluator's diagnostics, when the digits covered
  (`eval/coverage`) fall below the run's best by `collapse_coverage_drop`, or recall (the share
  of real images inside the samples' manifold) falls below `1 - collapse_recall_drop` of its best
  once that best has reached `collapse_min_recall` (below it, recall is noise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import ml_collections

T = TypeVar("T")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.max_loss = 100.0  # a loss above this is a bad step, like a non-finite one (0: off)
    c.spike_z = 6.0  # a watched metric this many EMA standard deviations above its mean
    c.spike_warmup = 20  # steps observed before spikes are flagged
    c.ema_decay = 0.98  # of the running mean and variance
    c.saturation = 0.99  # D accuracy on real and on fake both above this: D saturated
    # Early stopping on a metric logged at evaluation ("" off), lower is better.
    c.early_stop_metric = ""  # e.g. "eval/fd"
    c.patience = 3  # evaluations without an improvement of more than min_delta
    c.min_delta = 0.0
    # Mode-collapse alerts after each evaluation (0 switches either test off).
    c.collapse_coverage_drop = 1  # digits lost against the run's best eval/coverage
    c.collapse_recall_drop = 0.5  # share of the run's best eval/recall lost
    c.collapse_min_recall = 0.05  # recall is watched once its best has reached this
    return c


def init_monitor(keys: tuple[str, ...]) -> dict[str, jax.Array]:
    n = len(keys)
    return {"count": jnp.zeros((), jnp.int32), "mean": jnp.zeros((n,)), "var": jnp.zeros((n,))}


def bad_step(metrics: dict[str, jax.Array], loss_keys: tuple[str, ...],
             max_loss: float) -> tuple[jax.Array, jax.Array]:
    """(bad, nonfinite): whether the step must be skipped, and whether for a non-finite value
    (else a loss above `max_loss`)."""
    nonfinite = ~jnp.all(jnp.isfinite(jnp.stack([jnp.asarray(v, jnp.float32)
                                                 for v in metrics.values()])))
    too_large = jnp.any(jnp.stack([metrics[k] for k in loss_keys]) > max_loss) if max_loss else (
        jnp.zeros((), bool))
    return nonfinite | too_large, nonfinite


def guard(new, old, apply: jax.Array):
    """`new` where `apply`, else `old`, leaf by leaf (the skipped step changes nothing)."""
    return jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)


def guard_update(apply: jax.Array, update: Callable[[], T], old: T) -> T:
    """`update()` where `apply`, else `old`: how each trainer's step keeps a skipped step's
    state unchanged.

    `update` builds the new state, and computes the optimizer step itself (`optim.update`)
    rather than closing over the one computed for the step's metrics. On CPU it is then the
    true branch of a conditional, which XLA compiles on its own: its fused loops compute the
    new parameters and moments straight from the gradients and the old state. The selects of
    `guard` instead read the materialized updates, moments and parameters, new and old, after
    the norms that decide `apply`: for the DCGAN's 12.8M-parameter layer, Adam with the guard
    took 50-55 ms, and 36-41 ms this way (`benchmarks/README.md`). The metrics' norms are
    still computed, by the loops outside. Under `vmap` the conditional becomes a select; on
    other backends, where a conditional reads its predicate on the host, this is
    `guard(update(), old, apply)`."""
    if jax.default_backend() != "cpu":
        return guard(update(), old, apply)
    return jax.lax.cond(apply, update, lambda: old)


def observe(monitor: dict[str, jax.Array], metrics: dict[str, jax.Array],
            keys: tuple[str, ...], cfg, good: jax.Array
            ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Z-scores of `metrics[keys]` against the running statistics (before this step's update),
    a spike flag, and the statistics updated with this step's values if the step is `good`."""
    x = jnp.stack([metrics[k] for k in keys]).astype(jnp.float32)
    z = (x - monitor["mean"]) / jnp.sqrt(monitor["var"] + 1e-12)
    warm = monitor["count"] >= cfg.spike_warmup
    spike = warm & jnp.any(z > cfg.spike_z)
    # EMA with bias correction early on: the first step sets the mean (decay 0 at count 0).
    decay = jnp.minimum(cfg.ema_decay, monitor["count"] / (monitor["count"] + 1.0))
    delta = x - monitor["mean"]
    mean = monitor["mean"] + (1 - decay) * delta
    var = decay * (monitor["var"] + (1 - decay) * delta ** 2)
    updated = {"count": monitor["count"] + 1, "mean": mean, "var": var}
    monitor = guard(updated, monitor, good)
    flags = {f"monitor/{k.replace('/', '_')}_z": jnp.where(warm, z[i], 0.0)
             for i, k in enumerate(keys)}
    flags["monitor/spike"] = spike.astype(jnp.float32)
    return monitor, flags


def d_saturated(acc_real: jax.Array, acc_fake: jax.Array, threshold: float) -> jax.Array:
    """1.0 when D classifies nearly every real and every fake image right: G gets no signal."""
    return ((acc_real > threshold) & (acc_fake > threshold)).astype(jnp.float32)


def init_early_stop() -> dict[str, jax.Array]:
    return {"best": jnp.asarray(jnp.inf, jnp.float32), "best_step": jnp.zeros((), jnp.int32),
            "bad_evals": jnp.zeros((), jnp.int32), "stopped": jnp.zeros((), bool)}


def early_stop(es: dict[str, jax.Array], value: jax.Array, step: jax.Array, *, patience: int,
               min_delta: float) -> tuple[dict[str, jax.Array], jax.Array]:
    """One evaluation seen: (new bookkeeping, improved). A non-finite value never improves;
    `stopped` turns on after `patience` evaluations in a row without an improvement of more
    than `min_delta`."""
    value = jnp.asarray(value, jnp.float32)
    improved = jnp.isfinite(value) & (value < es["best"] - min_delta) & ~es["stopped"]
    bad = jnp.where(improved, 0, es["bad_evals"] + (~es["stopped"]).astype(jnp.int32))
    return {"best": jnp.where(improved, value, es["best"]),
            "best_step": jnp.where(improved, step, es["best_step"]),
            "bad_evals": bad, "stopped": es["stopped"] | (bad >= patience)}, improved


def _collapsed(metrics: dict, best: dict, cfg: ml_collections.ConfigDict) -> list[str]:
    """The collapse tests that `metrics` fail against the best values before them."""
    causes = []
    coverage, recall = metrics.get("eval/coverage"), metrics.get("eval/recall")
    if (cfg.collapse_coverage_drop and coverage is not None and best.get("eval/coverage")
            and coverage <= best["eval/coverage"] - cfg.collapse_coverage_drop):
        causes.append(f"eval/coverage {coverage:g} of 10 digits, down from "
                      f"{best['eval/coverage']:g}")
    if (cfg.collapse_recall_drop and recall is not None
            and (best.get("eval/recall") or 0) >= cfg.collapse_min_recall
            and recall < (1 - cfg.collapse_recall_drop) * best["eval/recall"]):
        causes.append(f"eval/recall {recall:.3g}, down from {best['eval/recall']:.3g}")
    return causes


def with_defaults(cfg: ml_collections.ConfigDict | dict | None) -> ml_collections.ConfigDict:
    """A run's stability config completed with the defaults of fields added since it ran."""
    full = default_config()
    full.update(dict(cfg or {}))
    return full


def collapse_alert(history: list[dict], cfg: ml_collections.ConfigDict) -> str | None:
    """Host side: an alert message if the newest evaluation in `history` (a run's eval records in
    step order) shows mode collapse that the one before it did not, else None. A collapse is
    coverage or recall fallen from the best value seen before (`default_config`)."""
    def state_at(i: int) -> list[str]:
        best = {k: max((h[k] for h in history[:i] if h.get(k) is not None), default=None)
                for k in ("eval/coverage", "eval/recall")}
        return _collapsed(history[i], best, cfg)

    if not history:
        return None
    causes = state_at(len(history) - 1)
    if not causes or (len(history) > 1 and state_at(len(history) - 2)):
        return None
    kl = history[-1].get("eval/class_kl")
    return ("mode collapse: " + "; ".join(causes)
            + (f" (eval/class_kl {kl:.3g})" if kl is not None else ""))
