"""The optax chain every model family uses, built from config in one fixed order.

Each network has its own optimizer config (`default_config`). `make_optimizer(cfg, total_steps)`
turns it into this chain, leaving out the stages that are off (a 0 threshold, weight decay or
momentum):

    clip_by_value -> clip_by_global_norm -> the optimizer's own scaling
    -> add_decayed_weights(weight_decay, mask=decay_mask) -> scale by -(lr * schedule(count))

Clipping comes first so that it bounds the raw gradient the moments see. Weight decay comes after
the optimizer's scaling, so it is decoupled from it (AdamW, Loshchilov & Hutter 2019), and, as in
`optax.adamw`, it is multiplied by the learning rate and its schedule. `count` is the number of
updates this network's optimizer has made (a step undone by the trainer's guard is not counted).

The learning rate is *data*: `optax.inject_hyperparams` keeps the run's own lr in the state, where
`init_optimizer` writes it (until then it is NaN, so an optimizer initialized any other way cannot
train silently). One compiled train step then serves every lr of a study (sweep members' states
are stacked and vmapped), and a resumed run restores its lr with the rest of its state. Everything
else in the config is static Python, so the compiled step is specialized to it.

Fields:
    name: "adam", "adamw", "sgd" or "rmsprop".
    b1, b2, eps: Adam's moment decays and epsilon; rmsprop uses b2 as its decay, and eps.
    momentum: sgd and rmsprop: heavy-ball momentum (0: none). Adam ignores it.
    nesterov: sgd and rmsprop: Nesterov momentum instead (needs momentum > 0).
    weight_decay: decoupled weight decay on kernels only (`decay_mask`), times the lr. "adamw" is
        "adam" with it, so adamw with 0 is an error; adam, sgd and rmsprop take it too.
    l1, l2: penalties l1 * sum|w| + l2 * sum w**2 over kernels that the trainer ADDS TO THE LOSS
        (`penalty`). Unlike weight_decay they are coupled: Adam rescales their gradients.
    clip_value: clip each gradient entry to [-clip_value, clip_value] (0: off).
    clip_norm: rescale the gradient to a global norm of at most clip_norm (0: off).
    lr_scale: this network's lr is the run's lr times lr_scale (e.g. a two-time-scale D, Heusel
        et al. 2017).
    batch_scaling, base_batch_size: "none", "linear" or "sqrt": also scale the lr by
        (batch_size / base_batch_size) ** 1 (Goyal et al. 2017) or ** 0.5 (Krizhevsky 2014).
    schedule.name: the lr multiplier over updates t (1 at the peak; `schedule`):
        "constant": 1.
        "step": decay_rate ** floor(t / decay_steps).
        "exponential": decay_rate ** (t / decay_steps).
        "cosine": 1 down to min_ratio over decay_steps (Loshchilov & Hutter 2017), then min_ratio.
        "cyclical": triangular (Smith 2017), min_ratio -> 1 -> min_ratio every 2 * decay_steps.
        "one_cycle": optax.cosine_onecycle_schedule over decay_steps divided by its peak:
            1 / div_factor, up to 1 at pct_start of the way, down to
            1 / (div_factor * final_div_factor) (Smith & Topin 2019).
    schedule.warmup_steps: linear warmup from 0 before any schedule, whose t counts from the
        warmup's end. It ramps to the schedule's first value: 1, but min_ratio for cyclical and
        1 / div_factor for one_cycle, which have ramps of their own. It may outlast the run.
    schedule.decay_steps: step and exponential: updates per decay by decay_rate; cosine and
        one_cycle: their length after warmup (0: the rest of the run, total_steps minus warmup);
        cyclical: a half cycle (must be > 0).
    schedule.decay_rate, schedule.min_ratio: as above.
    schedule.pct_start, schedule.div_factor, schedule.final_div_factor: one_cycle, with
        optax.cosine_onecycle_schedule's meanings.

Adam note: optax adds epsilon to sqrt(v_hat); TF's Adam adds it to sqrt(v) before the bias
correction ("epsilon hat"). With eps = 1e-8 the two differ only while v is ~1e-16 or smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxgen.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "step", "exponential", "cosine", "cyclical", "one_cycle")
BATCH_SCALINGS = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}  # the batch ratio's exponent

# (field, test, the rule the message states); negative counts or strengths are always mistakes.
_RULES = (
    ("b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("eps", lambda v: v >= 0, ">= 0"),
    ("momentum", lambda v: 0 <= v < 1, "in [0, 1) (0: none)"),
    ("weight_decay", lambda v: v >= 0, ">= 0 (0: off)"),
    ("l1", lambda v: v >= 0, ">= 0 (0: off)"),
    ("l2", lambda v: v >= 0, ">= 0 (0: off)"),
    ("clip_norm", lambda v: v >= 0, ">= 0 (0: off)"),
    ("clip_value", lambda v: v >= 0, ">= 0 (0: off)"),
    ("lr_scale", lambda v: v > 0, "> 0"),
    ("base_batch_size", lambda v: v > 0, "> 0"),
    ("schedule.warmup_steps", lambda v: v >= 0, ">= 0 (0: no warmup)"),
    ("schedule.decay_steps", lambda v: v >= 0, ">= 0"),
    ("schedule.decay_rate", lambda v: v > 0, "> 0"),
    ("schedule.min_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("schedule.pct_start", lambda v: 0 < v < 1, "in (0, 1)"),
    ("schedule.div_factor", lambda v: v > 0, "> 0"),
    ("schedule.final_div_factor", lambda v: v > 0, "> 0"),
)


def default_config(name: str = "adam") -> ml_collections.ConfigDict:
    """One network's optimizer; the module docstring documents every field. "adamw" starts from
    optax's weight decay, 1e-4, since adamw without weight decay is an error."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.b1, c.b2, c.eps = 0.9, 0.999, 1e-8
    c.momentum = 0.0
    c.nesterov = False
    c.weight_decay = 1e-4 if name == "adamw" else 0.0
    c.l1, c.l2 = 0.0, 0.0
    c.clip_norm = 0.0
    c.clip_value = 0.0
    c.lr_scale = 1.0
    c.batch_scaling = "none"
    c.base_batch_size = 100
    c.schedule = ml_collections.ConfigDict(dict(
        name="constant", warmup_steps=0, decay_steps=0, decay_rate=0.1, min_ratio=0.0,
        pct_start=0.3, div_factor=25.0, final_div_factor=1e4))
    return c


def check_config(cfg: ml_collections.ConfigDict, where: str) -> None:
    """Raises `UserError` naming the first bad field as --config.<where>.<field>=<value>, and the
    fix. A warmup longer than the run is allowed (the lr then never reaches its peak)."""
    def bad(field: str, value: Any, problem: str) -> UserError:
        return UserError(f"--config.{where}.{field}={value} {problem}")

    s = cfg.schedule
    if cfg.name not in OPTIMIZERS:
        raise bad("name", cfg.name, f"is an unknown optimizer. Fix: use one of {OPTIMIZERS}.")
    if s.name not in SCHEDULES:
        raise bad("schedule.name", s.name,
                  f"is an unknown schedule. Fix: use one of {SCHEDULES}.")
    if cfg.batch_scaling not in BATCH_SCALINGS:
        raise bad("batch_scaling", cfg.batch_scaling,
                  f"is unknown. Fix: use one of {tuple(BATCH_SCALINGS)}.")
    for field, ok, rule in _RULES:
        value = cfg
        for part in field.split("."):
            value = value[part]
        if not ok(value):
            raise bad(field, value, f"is out of range. Fix: use a value {rule}.")
    if cfg.name == "adamw" and not cfg.weight_decay:
        raise bad("weight_decay", cfg.weight_decay,
                  "with name=adamw decays nothing. Fix: use name=adam, or set weight_decay > 0 "
                  "(e.g. 1e-4).")
    if cfg.name in ("sgd", "rmsprop") and cfg.nesterov and not cfg.momentum:
        raise bad("nesterov", cfg.nesterov, "has no effect without momentum. Fix: set "
                  "momentum > 0 (e.g. 0.9), or nesterov=False.")
    if s.name in ("step", "exponential", "cyclical") and not s.decay_steps:
        raise bad("schedule.decay_steps", s.decay_steps,
                  f"leaves the {s.name} schedule without a period. Fix: set decay_steps > 0.")


def spans_run(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the schedule's length is the run's (cosine and one_cycle with decay_steps 0), so
    that the optimizer depends on `total_steps`."""
    return cfg.schedule.name in ("cosine", "one_cycle") and not cfg.schedule.decay_steps


def schedule(cfg_schedule: ml_collections.ConfigDict,
             total_steps: int) -> Callable[[jax.Array], jax.Array]:
    """The lr multiplier at an optimizer step count: 1.0 at the peak (the module docstring gives
    each schedule). Constant is 1 everywhere; warmup ramps linearly from 0 at count 0 to the
    schedule's first value (1, but for cyclical and one_cycle) at count warmup_steps. The
    cyclical (triangular, Smith 2017) one goes min_ratio -> 1 -> min_ratio every 2*decay_steps.
    one_cycle follows optax.cosine_onecycle_schedule divided by its peak.

    `total_steps` (the run's length) sets cosine's and one_cycle's length when decay_steps is 0.
    """
    s = cfg_schedule
    length = s.decay_steps
    if s.name in ("cosine", "one_cycle") and not length:
        if total_steps <= 0:
            raise ValueError(f"the {s.name} schedule spans the run, so it needs total_steps > 0 "
                             f"(got {total_steps}) or schedule.decay_steps > 0")
        length = max(total_steps - s.warmup_steps, 1)  # a warmup may outlast the run
    start = 1.0
    if s.name == "constant":
        main = optax.constant_schedule(1.0)
    elif s.name in ("step", "exponential"):
        main = optax.exponential_decay(1.0, s.decay_steps, s.decay_rate,
                                       staircase=s.name == "step")
    elif s.name == "cosine":
        main = optax.cosine_decay_schedule(1.0, length, alpha=s.min_ratio)
    elif s.name == "cyclical":
        def main(count):
            # 1 at a cycle's ends, 0 at its middle (the peak).
            distance = jnp.abs(jnp.mod(count / s.decay_steps, 2.0) - 1.0)
            return s.min_ratio + (1.0 - s.min_ratio) * (1.0 - distance)
        start = s.min_ratio
    elif s.name == "one_cycle":
        main = optax.cosine_onecycle_schedule(length, 1.0, s.pct_start, s.div_factor,
                                              s.final_div_factor)
        start = 1.0 / s.div_factor
    else:
        raise ValueError(f"unknown schedule {s.name!r}; choose one of {SCHEDULES}")
    if not s.warmup_steps:
        return main
    warmup = optax.linear_schedule(0.0, start, s.warmup_steps)
    return optax.join_schedules([warmup, main], [s.warmup_steps])


def decay_mask(params) -> Any:
    """A pytree of bools like params: True for weight matrices and convolution kernels (leaves
    named "kernel" or "embedding", or any leaf with ndim >= 2), False for biases and
    normalization scales/offsets, whose decay only shifts or shrinks activations and hurts."""
    def is_weight(path, leaf) -> bool:
        name = getattr(path[-1], "key", None) if path else None
        return name in ("kernel", "embedding") or jnp.ndim(leaf) >= 2

    return jax.tree_util.tree_map_with_path(is_weight, params)


def penalty(params, cfg: ml_collections.ConfigDict) -> jax.Array:
    """cfg.l1 * sum|w| + cfg.l2 * sum w**2 over the kernels (`decay_mask`), for the trainer to add
    to the loss; 0.0 when both are 0, without touching params (nothing enters the graph)."""
    if not (cfg.l1 or cfg.l2):
        return jnp.zeros((), jnp.float32)
    mask = jax.tree.leaves(decay_mask(params))
    kernels = [w for w, m in zip(jax.tree.leaves(params), mask, strict=True) if m]
    total = jnp.zeros((), jnp.float32)
    if cfg.l1:
        total += cfg.l1 * sum(jnp.abs(w).sum() for w in kernels)
    if cfg.l2:
        total += cfg.l2 * sum(jnp.square(w).sum() for w in kernels)
    return total


def _stages(cfg: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
    """The chain before the lr, in the module docstring's order; stages that are off are left
    out, so they cost nothing and hold no state."""
    stages = []
    if cfg.clip_value:
        stages.append(optax.clip(cfg.clip_value))
    if cfg.clip_norm:
        stages.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name in ("adam", "adamw"):
        stages.append(optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps))
    elif cfg.name == "rmsprop":
        stages.append(optax.scale_by_rms(decay=cfg.b2, eps=cfg.eps))
    if cfg.name in ("sgd", "rmsprop") and cfg.momentum:
        stages.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
    if cfg.weight_decay:
        stages.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    return stages


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, *,
                   where: str = "optimizer") -> optax.GradientTransformation:
    """The chain in this fixed order: clip_by_value -> clip_by_global_norm -> the optimizer's own
    scaling (scale_by_adam / trace (momentum, nesterov) / scale_by_rms (+trace)) ->
    add_decayed_weights(weight_decay, mask=decay_mask) -> scale by -(lr * schedule(count)).

    Only `learning_rate` is injected into the state (`inject_hyperparams`): NaN until
    `init_optimizer` writes the run's lr. The rest is static, so the compiled step is specialized.
    With constant lr, sgd and rmsprop equal optax's; optax.rmsprop scales by the lr before its
    momentum, which differs only while the lr changes. `where` names the config in errors
    (`check_config`), e.g. "g_optimizer".
    """
    check_config(cfg, where)
    multiplier = schedule(cfg.schedule, total_steps)

    def chain(learning_rate):
        # scale_by_learning_rate keeps its own count (read back by current_learning_rate).
        return optax.chain(*_stages(cfg), optax.scale_by_learning_rate(
            lambda count: learning_rate * multiplier(count)))

    return optax.inject_hyperparams(chain)(learning_rate=float("nan"))


def init_optimizer(tx: optax.GradientTransformation, params,
                   learning_rate: float | jax.Array) -> optax.OptState:
    """`tx.init(params)` with the learning rate of this run written into the state.
    `learning_rate` may be traced (the states of a sweep are made under `jax.vmap`)."""
    state = tx.init(params)
    old = state.hyperparams["learning_rate"]
    state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, old.dtype)
    return state


def run_learning_rate(cfg: ml_collections.ConfigDict, learning_rate: float | jax.Array,
                      batch_size: int) -> float | jax.Array:
    """The run's lr for this network: learning_rate * lr_scale * batch scaling."""
    ratio = batch_size / cfg.base_batch_size
    return learning_rate * cfg.lr_scale * ratio ** BATCH_SCALINGS[cfg.batch_scaling]


def current_learning_rate(opt_state: optax.OptState, cfg: ml_collections.ConfigDict,
                          total_steps: int) -> jax.Array:
    """The lr the next update will use: the injected lr times the schedule at the count that
    the chain's lr stage will see. For logging as `g/lr`, `d/lr`."""
    # Found by type, not position: Adam's state has a count of its own.
    is_lr_stage = lambda s: isinstance(s, optax.ScaleByScheduleState)
    (count,) = [s.count for s in jax.tree.leaves(opt_state, is_leaf=is_lr_stage)
                if is_lr_stage(s)]
    multiplier = schedule(cfg.schedule, total_steps)(count)
    return opt_state.hyperparams["learning_rate"] * jnp.asarray(multiplier, jnp.float32)


def ema_decay(half_life: float, batch_size: int, images_seen: jax.Array | float,
              rampup: float) -> jax.Array | float:
    """Per-step decay of a parameter average: after `half_life` images an old parameter's
    weight has halved. With `rampup` > 0 the half-life is at most `rampup` times the images
    seen so far (StyleGAN2-ADA's `ema_rampup`), so that a short run's average is not held back
    by its first, random parameters."""
    if rampup > 0:
        half_life = jnp.minimum(half_life, rampup * images_seen)
    return 0.5 ** (batch_size / jnp.maximum(half_life, 1e-8))


def update(tx: optax.GradientTransformation, grads, opt_state, params):
    """One optimizer step: (updates, new optimizer state, new parameters)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return updates, opt_state, optax.apply_updates(params, updates)


def ema_update(average, params, decay: float):
    """decay * average + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda a, p: decay * a + (1 - decay) * p, average, params)
