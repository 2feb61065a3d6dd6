"""The optax chain, built from config in one fixed order.

Every hyperparameter of the chain is *data* in the optimizer state (`optax.inject_hyperparams`),
so one compiled train step serves every learning rate of a study, and a resumed run restores its
learning rate with the rest of its state.

Adam note: optax adds epsilon to sqrt(v_hat); TF's Adam adds it to sqrt(v) before the bias
correction ("epsilon hat"). With eps = 1e-8 the two differ only while v is ~1e-16 or smaller.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

_OPTIMIZERS = {
    "adam": lambda learning_rate, b1, b2, eps, momentum: optax.adam(learning_rate, b1, b2, eps),
    "sgd": lambda learning_rate, b1, b2, eps, momentum: optax.sgd(learning_rate, momentum or None),
    "rmsprop": lambda learning_rate, b1, b2, eps, momentum: optax.rmsprop(
        learning_rate, decay=b2, eps=eps, momentum=momentum or None),
}


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name` with its hyperparameters injected into its state.

    `cfg` holds `name`, `b1`, `b2`, `eps` and `momentum` (those the optimizer does not use are
    ignored). The learning rate is a run's own: `init_optimizer` writes it into the state, and
    until then it is NaN, so an optimizer initialized any other way cannot train silently.
    """
    if cfg.name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.name!r}; choose one of {sorted(_OPTIMIZERS)}")
    build = _OPTIMIZERS[cfg.name]
    return optax.inject_hyperparams(build)(
        learning_rate=float("nan"), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, momentum=cfg.momentum)


def init_optimizer(tx: optax.GradientTransformation, params, learning_rate: float):
    """`tx.init(params)` with the learning rate of this run written into the state."""
    state = tx.init(params)
    old = state.hyperparams["learning_rate"]
    state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, old.dtype)
    return state
