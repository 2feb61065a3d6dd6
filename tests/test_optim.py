import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import optim
from jaxgen.errors import UserError

# Made in NumPy: eager jnp ops at import would each compile, in every test worker.
_NP_PARAMS = {"dense": {"kernel": np.array([[0.5, -1.0], [2.0, -0.25], [1.0, 3.0]], np.float32),
                        "bias": np.array([0.5, -2.0], np.float32)}}
PARAMS = jax.tree.map(jnp.asarray, _NP_PARAMS)
GRADS = [jax.tree.map(lambda p, i=i: jnp.asarray(np.cos(3 * p + i)), _NP_PARAMS) for i in range(3)]


def _cfg(name="adam", schedule=None, **fields):
    cfg = optim.default_config(name)
    cfg.update(fields)
    cfg.schedule.update(schedule or {})
    return cfg


@functools.partial(jax.jit, static_argnums=0)  # one program, not each op compiled on its own
def _run(tx, state, params=PARAMS, grads=GRADS):
    """The updates of len(grads) steps, and the final state."""
    updates = []
    for g in grads:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        updates.append(u)
    return updates, state


def test_learning_rate_is_data_in_the_state():
    tx = optim.make_optimizer(_cfg(), 10)
    params = {"w": jnp.ones(3)}
    assert np.isnan(tx.init(params).hyperparams["learning_rate"])
    state = optim.init_optimizer(tx, params, 0.01)
    (updates,), _ = _run(tx, state, params, [{"w": jnp.ones(3)}])
    # Adam's first step moves every coordinate by the learning rate.
    np.testing.assert_allclose(updates["w"], -0.01, rtol=1e-4)
    adam = optax.adam(0.01)
    (reference,), _ = _run(adam, adam.init(params), params, [{"w": jnp.ones(3)}])
    np.testing.assert_allclose(updates["w"], reference["w"], rtol=1e-4)


def test_unknown_optimizer():
    with pytest.raises(UserError, match="name=adagrad9 is an unknown optimizer"):
        optim.make_optimizer(_cfg("adagrad9"), 10)


@pytest.mark.parametrize("fields, reference", [
    # The bias is not decayed: the reference's mask is written out, not `decay_mask`.
    (dict(name="adamw", weight_decay=0.3),
     optax.adamw(0.1, weight_decay=0.3, mask={"dense": {"kernel": True, "bias": False}})),
    (dict(name="sgd", momentum=0.9, nesterov=True), optax.sgd(0.1, 0.9, nesterov=True)),
    (dict(name="rmsprop", b2=0.9, eps=1e-3, momentum=0.5),
     optax.rmsprop(0.1, decay=0.9, eps=1e-3, momentum=0.5)),
], ids=["adamw", "sgd_nesterov", "rmsprop_momentum"])
def test_matches_optax_over_three_steps(fields, reference):
    tx = optim.make_optimizer(_cfg(**fields), 10)
    ours, _ = _run(tx, optim.init_optimizer(tx, PARAMS, 0.1))
    theirs, _ = _run(reference, reference.init(PARAMS))
    for u, r in zip(ours, theirs):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), u, r)


def test_clipping():
    huge = jax.tree.map(lambda g: 1e4 * np.asarray(g), GRADS[0])
    tx = optim.make_optimizer(_cfg("sgd", clip_norm=1.5), 10)
    (u,), _ = _run(tx, optim.init_optimizer(tx, PARAMS, 1.0), grads=[huge])
    norm = np.sqrt(sum(np.square(leaf).sum() for leaf in jax.tree.leaves(u)))
    np.testing.assert_allclose(norm, 1.5, rtol=1e-5)

    tx = optim.make_optimizer(_cfg("sgd", clip_value=0.5), 10)
    (u,), _ = _run(tx, optim.init_optimizer(tx, PARAMS, 0.1), grads=GRADS[:1])
    assert np.abs(jax.tree.leaves(GRADS[0])[0]).max() > 0.5  # some entries are clipped
    for a, g in zip(jax.tree.leaves(u), jax.tree.leaves(GRADS[0])):
        assert np.all(np.abs(a) <= 0.05 + 1e-7)
        np.testing.assert_allclose(a, -0.1 * np.clip(g, -0.5, 0.5), rtol=1e-6)


def test_penalty_gradients_reach_kernels_only():
    params = {**PARAMS, "norm": {"scale": jnp.array([2.0, -3.0])}}
    kernel = np.asarray(params["dense"]["kernel"])
    penalty = lambda **fields: (lambda p: optim.penalty(p, _cfg(**fields)))  # jitted below
    grad = lambda **fields: jax.tree.map(np.asarray, jax.jit(jax.grad(penalty(**fields)))(params))
    g = grad(l1=0.1)
    np.testing.assert_allclose(g["dense"]["kernel"], 0.1 * np.sign(kernel), rtol=1e-6)
    assert not np.any(g["dense"]["bias"]) and not np.any(g["norm"]["scale"])
    np.testing.assert_allclose(grad(l2=0.1)["dense"]["kernel"], 0.2 * kernel, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(penalty(l1=0.1, l2=0.1))(params),
                               0.1 * np.abs(kernel).sum() + 0.1 * np.square(kernel).sum(),
                               rtol=1e-6)
    assert float(optim.penalty(params, _cfg())) == 0.0


@pytest.mark.parametrize("fields, total, expected", [
    (dict(warmup_steps=4), 10, {0: 0.0, 2: 0.5, 4: 1.0, 9: 1.0}),
    (dict(name="step", decay_steps=5), 10, {4: 1.0, 5: 0.1, 10: 0.01}),
    (dict(name="exponential", decay_steps=4, decay_rate=0.25), 10, {2: 0.5, 4: 0.25}),
    (dict(name="cosine", min_ratio=0.1), 10, {0: 1.0, 5: 0.55, 10: 0.1, 20: 0.1}),
    (dict(name="cosine", min_ratio=0.1, warmup_steps=2), 10, {2: 1.0, 10: 0.1}),
    (dict(name="cyclical", decay_steps=4, min_ratio=0.2), 10,
     {0: 0.2, 2: 0.6, 4: 1.0, 8: 0.2, 12: 1.0}),
    (dict(name="cyclical", decay_steps=4, min_ratio=0.2, warmup_steps=2), 10,
     {0: 0.0, 2: 0.2, 6: 1.0}),
    (dict(name="one_cycle"), 10, {0: 1 / 25, 3: 1.0, 10: 1 / 25e4}),
], ids=["warmup", "step", "exponential", "cosine", "cosine_warmup", "cyclical",
        "cyclical_warmup", "one_cycle"])
def test_schedule_boundaries(fields, total, expected):
    multiplier = jax.jit(optim.schedule(_cfg(schedule=fields).schedule, total))
    for count, value in expected.items():
        np.testing.assert_allclose(multiplier(jnp.asarray(count)), value, rtol=1e-5, atol=1e-8,
                                   err_msg=f"count {count}")


def test_updates_and_current_learning_rate_follow_the_schedule():
    cfg = _cfg("sgd", schedule=dict(name="cosine", warmup_steps=2))
    tx = optim.make_optimizer(cfg, 10)
    multiplier = jax.jit(optim.schedule(cfg.schedule, 10))
    updates, state = _run(tx, optim.init_optimizer(tx, PARAMS, 0.1))
    for k, (u, g) in enumerate(zip(updates, GRADS)):
        np.testing.assert_allclose(u["dense"]["kernel"],
                                   -0.1 * float(multiplier(k)) * np.asarray(g["dense"]["kernel"]),
                                   rtol=1e-5)
    current = float(jax.jit(lambda s: optim.current_learning_rate(s, cfg, 10))(state))
    np.testing.assert_allclose(current, 0.1 * multiplier(3), rtol=1e-6)
    assert 0 < current < 0.1


def test_learning_rate_is_per_member_under_vmap():
    cfg = _cfg("adamw", weight_decay=0.1, clip_norm=1.0)
    tx = optim.make_optimizer(cfg, 10)
    lrs = jnp.array([0.1, 0.025])

    @jax.jit  # one program, not each op compiled on its own
    def members(lrs):
        states = jax.vmap(lambda lr: optim.init_optimizer(tx, PARAMS, lr))(lrs)
        updates, states = jax.vmap(lambda s: tx.update(GRADS[0], s, PARAMS))(states)
        return updates, jax.vmap(lambda s: optim.current_learning_rate(s, cfg, 10))(states)

    updates, current = members(lrs)
    kernel = np.asarray(updates["dense"]["kernel"])
    assert np.all(kernel[0] != 0)
    np.testing.assert_allclose(kernel[0], 4.0 * kernel[1], rtol=1e-5)
    np.testing.assert_allclose(current, lrs, rtol=1e-6)


def test_run_learning_rate():
    assert optim.run_learning_rate(_cfg(lr_scale=2.0), 0.01, 400) == pytest.approx(0.02)
    linear = _cfg(lr_scale=2.0, batch_scaling="linear")
    assert optim.run_learning_rate(linear, 0.01, 400) == pytest.approx(0.08)
    sqrt = _cfg(batch_scaling="sqrt", base_batch_size=64)
    assert optim.run_learning_rate(sqrt, 0.01, 16) == pytest.approx(0.005)


@pytest.mark.parametrize("fields, message", [
    (dict(name="adamw", weight_decay=0.0), "d_optimizer.weight_decay=0.0 with name=adamw"),
    (dict(momentum=-0.5), "d_optimizer.momentum=-0.5 is out of range"),
    (dict(name="sgd", nesterov=True), "d_optimizer.nesterov=True has no effect"),
    (dict(batch_scaling="cubic"), "d_optimizer.batch_scaling=cubic is unknown"),
    (dict(clip_norm=-1.0), "d_optimizer.clip_norm=-1.0 is out of range"),
    (dict(schedule=dict(name="linear")), "d_optimizer.schedule.name=linear is an unknown"),
    (dict(schedule=dict(name="cyclical")), "d_optimizer.schedule.decay_steps=0 leaves"),
])
def test_check_config_names_the_field(fields, message):
    with pytest.raises(UserError, match=message):
        optim.check_config(_cfg(**fields), "d_optimizer")
    optim.check_config(optim.default_config("adamw"), "d_optimizer")  # the defaults are valid
