import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models import layers


def test_dropout_matches_flax_dropout_exactly_in_values_and_gradients():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 50))
    key = jax.random.PRNGKey(7)

    def run(module, x):
        return module.apply({}, x, rngs={"dropout": key})

    ours = jax.jit(lambda x: run(layers.Dropout(0.5), x))(x)
    theirs = jax.jit(lambda x: run(nn.Dropout(0.5, deterministic=False), x))(x)
    np.testing.assert_array_equal(ours, theirs)
    assert 0.3 < float((ours == 0).mean()) < 0.7
    g_ours = jax.grad(lambda x: (run(layers.Dropout(0.5), x) ** 2).sum())(x)
    g_theirs = jax.grad(lambda x: (run(nn.Dropout(0.5, deterministic=False), x) ** 2).sum())(x)
    np.testing.assert_array_equal(g_ours, g_theirs)
    np.testing.assert_array_equal(layers.Dropout(0.5, deterministic=True).apply({}, x), x)


def test_stored_mask_returns_the_mask_unchanged_also_under_vmap():
    mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (4, 9))
    np.testing.assert_array_equal(jax.jit(layers.stored_mask)(mask), mask)
    np.testing.assert_array_equal(jax.vmap(layers.stored_mask)(mask), mask)
    assert jax.jit(layers.stored_mask)(jnp.zeros((3,), bool)).dtype == jnp.bool_
