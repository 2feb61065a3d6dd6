import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import optim, stability


def _cfg(**kw):
    c = stability.default_config()
    c.update(kw)
    return c


def test_bad_step_flags_nonfinite_and_too_large_losses():
    ok = {"d/loss": jnp.asarray(1.0), "g/loss": jnp.asarray(2.0), "g/grad_norm": jnp.asarray(3.)}
    bad_step = jax.jit(stability.bad_step, static_argnums=(1, 2))  # as in a train step
    bad, nonfinite = bad_step(ok, ("d/loss", "g/loss"), 100.0)
    assert not bad and not nonfinite
    bad, nonfinite = bad_step({**ok, "g/grad_norm": jnp.asarray(jnp.nan)}, ("d/loss", "g/loss"),
                              100.0)
    assert bad and nonfinite
    bad, nonfinite = bad_step({**ok, "d/loss": jnp.asarray(4142.0)}, ("d/loss", "g/loss"), 100.0)
    assert bad and not nonfinite
    bad, _ = bad_step({**ok, "d/loss": jnp.asarray(4142.0)}, ("d/loss",), 0.0)
    assert not bad  # max_loss 0: the loss limit is off


def test_guard_keeps_the_old_state_for_a_skipped_step():
    old, new = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    np.testing.assert_array_equal(stability.guard(new, old, jnp.asarray(False))["w"], 1.0)
    np.testing.assert_array_equal(stability.guard(new, old, jnp.asarray(True))["w"], 0.0)


def test_guard_update_applies_the_optimizer_step_only_where_told_also_under_vmap():
    tx = optax.adam(0.1)
    params = {"w": jnp.arange(4.0)}
    grads = {"w": jnp.asarray([1.0, -2.0, jnp.nan, 0.5])}  # NaN: a step the guard must skip
    opt_state = tx.init(params)

    def step(apply, grads):
        def update():
            _, new_opt, new_params = optim.update(tx, grads, opt_state, params)
            return new_params, new_opt
        return stability.guard_update(apply, update, (params, opt_state))

    _, expected_opt, expected = jax.jit(lambda g: optim.update(tx, g, opt_state, params))(
        {"w": jnp.ones(4)})  # jitted like the guarded step it is compared with bit for bit
    applied, applied_opt = jax.jit(step)(jnp.asarray(True), {"w": jnp.ones(4)})
    np.testing.assert_array_equal(applied["w"], expected["w"])
    np.testing.assert_array_equal(applied_opt[0].mu["w"], expected_opt[0].mu["w"])
    kept, kept_opt = jax.jit(step)(jnp.asarray(False), grads)
    np.testing.assert_array_equal(kept["w"], params["w"])
    np.testing.assert_array_equal(kept_opt[0].nu["w"], 0.0)
    both = jax.jit(jax.vmap(step))(jnp.asarray([True, False]),
                                   {"w": jnp.stack([jnp.ones(4), grads["w"]])})[0]["w"]
    np.testing.assert_array_equal(both[0], expected["w"])
    np.testing.assert_array_equal(both[1], params["w"])


def test_spike_detector_fires_on_a_jump_after_warmup_only():
    cfg = _cfg(spike_warmup=10, spike_z=6.0)
    keys = ("g/loss",)
    # Jitted as in a train step: one program, not each op compiled on its own.
    observe = jax.jit(lambda monitor, value, good: stability.observe(
        monitor, {"g/loss": jnp.asarray(value, jnp.float32)}, keys, cfg, jnp.asarray(good)))
    monitor = stability.init_monitor(keys)
    rng = np.random.default_rng(0)
    flags = None
    for i in range(30):
        value = 1.0 + 0.01 * rng.normal()
        monitor, flags = observe(monitor, value, True)
        assert flags["monitor/spike"] == 0.0, i
    assert abs(float(monitor["mean"][0]) - 1.0) < 0.01
    assert 0.005 < np.sqrt(float(monitor["var"][0])) < 0.02
    _, flags = observe(monitor, 2.0, True)
    assert flags["monitor/spike"] == 1.0 and flags["monitor/g_loss_z"] > 50
    # a jump within the warmup is not flagged
    fresh, flags = observe(stability.init_monitor(keys), 9.0, True)
    assert flags["monitor/spike"] == 0.0
    # a bad step does not move the statistics
    same, _ = observe(monitor, 1e6, False)
    np.testing.assert_array_equal(same["mean"], monitor["mean"])


def test_discriminator_saturation():
    assert stability.d_saturated(jnp.asarray(1.0), jnp.asarray(0.995), 0.99) == 1.0
    assert stability.d_saturated(jnp.asarray(1.0), jnp.asarray(0.5), 0.99) == 0.0


def test_early_stopping_fires_after_the_patience_and_keeps_the_best():
    es = stability.init_early_stop()
    history = []
    early_stop = jax.jit(functools.partial(stability.early_stop, patience=2, min_delta=0.1))
    for step, value in enumerate([10.0, 8.0, 8.5, 7.95, 9.0, 9.0]):
        es, improved = early_stop(es, value, jnp.asarray(step))
        history.append((bool(improved), bool(es["stopped"])))
    # 7.95 is not an improvement of more than 0.1 on 8.0; two evaluations without one stop it
    assert history == [(True, False), (True, False), (False, False), (False, True),
                       (False, True), (False, True)]
    assert float(es["best"]) == 8.0 and int(es["best_step"]) == 1
    # NaN never improves; vmapped over members, each keeps its own bookkeeping
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), stability.init_early_stop())
    es, improved = jax.jit(jax.vmap(lambda e, v: stability.early_stop(e, v, 0, patience=1,
                                                                      min_delta=0.0)))(
        stacked, jnp.asarray([jnp.nan, 3.0]))
    assert improved.tolist() == [False, True] and es["stopped"].tolist() == [True, False]


def test_collapse_alert_on_lost_coverage_or_recall_once_per_episode():
    cfg = stability.default_config()  # 1 digit, half of the best recall
    healthy = {"eval/coverage": 10, "eval/recall": 0.6, "eval/class_kl": 0.05}
    assert stability.collapse_alert([healthy], cfg) is None
    fewer = {"eval/coverage": 8, "eval/recall": 0.55, "eval/class_kl": 0.9}
    message = stability.collapse_alert([healthy, fewer], cfg)
    assert "eval/coverage 8 of 10 digits, down from 10" in message and "class_kl 0.9" in message
    assert stability.collapse_alert([healthy, fewer, fewer], cfg) is None  # already alerted
    low_recall = {"eval/coverage": 10, "eval/recall": 0.2}
    assert "eval/recall 0.2, down from 0.6" in stability.collapse_alert([healthy, low_recall], cfg)
    mild = {"eval/coverage": 10, "eval/recall": 0.4}  # a third lost: not sharp
    assert stability.collapse_alert([healthy, mild], cfg) is None
    noise = {"eval/coverage": 10, "eval/recall": 0.01}  # a best below collapse_min_recall
    assert stability.collapse_alert([noise, {**noise, "eval/recall": 0.0}], cfg) is None
    cfg.collapse_coverage_drop = 0
    assert stability.collapse_alert([healthy, fewer], cfg) is None
