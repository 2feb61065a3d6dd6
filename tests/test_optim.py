import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxgen import optim


def _cfg(name="adam"):
    return ml_collections.ConfigDict(dict(name=name, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0))


def test_learning_rate_is_data_in_the_state():
    tx = optim.make_optimizer(_cfg())
    params = {"w": jnp.ones(3)}
    assert np.isnan(tx.init(params).hyperparams["learning_rate"])
    state = optim.init_optimizer(tx, params, 0.01)
    updates, _ = tx.update({"w": jnp.ones(3)}, state, params)
    # Adam's first step moves every coordinate by the learning rate.
    np.testing.assert_allclose(updates["w"], -0.01, rtol=1e-4)
    reference = optax.adam(0.01).update({"w": jnp.ones(3)}, optax.adam(0.01).init(params))[0]
    np.testing.assert_allclose(updates["w"], reference["w"], rtol=1e-4)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make_optimizer(_cfg("adagrad9"))
