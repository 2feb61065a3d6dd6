"""jaxgen's runtime settings change speed, never numbers."""

import ctypes

import jax
import jax.numpy as jnp
import numpy as np

import jaxgen  # noqa: F401  (applies the settings)
from jaxgen import backend


def test_settings_are_applied_on_import():
    applied = backend.configure()
    assert applied["threefry_unrolled"]
    assert applied["malloc_keep"] == bool(ctypes.util.find_library("c"))


def _draws(key):
    return (jax.random.bernoulli(key, 0.5, (7, 33)), jax.random.uniform(key, (5, 3)),
            jax.random.normal(jax.random.fold_in(key, 3), (4, 2)), jax.random.split(key, 3))


def test_unrolled_threefry_draws_the_same_bits_as_jax_own_cpu_lowering():
    key = jax.random.PRNGKey(1234)
    unrolled = [np.asarray(x) for x in jax.jit(_draws)(key)]
    assert "stablehlo.while" not in jax.jit(_draws).lower(key).as_text()
    assert backend.roll_threefry_on_cpu()
    try:
        rolled_fn = jax.jit(lambda k: _draws(k))
        assert "stablehlo.while" in rolled_fn.lower(key).as_text()  # JAX's own: a rolled loop
        rolled = [np.asarray(x) for x in rolled_fn(key)]
    finally:
        backend.unroll_threefry_on_cpu()
    for a, b in zip(unrolled, rolled, strict=True):
        np.testing.assert_array_equal(a, b)
    # and both equal a fresh jit of the same function after restoring
    again = [np.asarray(x) for x in jax.jit(lambda k: _draws(k))(key)]
    for a, b in zip(unrolled, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_kept_memory_still_computes_large_arrays_right():
    assert backend.keep_freed_memory() in (True, False)
    x = jnp.full((14_000_000,), 3.0, jnp.float32)  # 56 MB, above glibc's default mmap cap
    step = jax.jit(lambda v, c: v * 2.0 + c)
    for i in range(3):  # each result in memory freed by the one before and reused
        y = step(x, float(i))
        assert float(y.min()) == float(y.max()) == 6.0 + i
