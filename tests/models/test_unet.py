"""The DDPM's UNet: shapes, the time conditioning, its config fields and their errors (on 8x8
inputs, which the UNet takes as it takes MNIST's 28x28)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models import layers, unet


def tiny(**fields):
    cfg = unet.default_model_config()
    cfg.update(dict(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(4,), norm_groups=4, dropout=0.0), **fields)
    return cfg


def test_shapes_and_time_conditioning():
    model = unet.make_model(tiny())
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 1), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), x, jnp.zeros((2,), jnp.int32))
    assert any(k.startswith("Attention") for k in shapes["params"])
    # Parameters set by hand, varied across entries (a random initialization takes long to
    # compile on CPU), in NumPy (JAX would compile a program per shape), passed to the jitted
    # apply as arguments rather than baked in as constants.
    leaves, tree = jax.tree.flatten(shapes)
    params = jax.tree.unflatten(tree, [(0.1 * np.sin(np.arange(s.size) * (i + 1.7))).reshape(
        s.shape).astype(np.float32) for i, s in enumerate(leaves)])
    apply = jax.jit(lambda params, t: model.apply(params, x, t))
    out = apply(params, np.array([0, 0], np.int32))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    assert not np.allclose(out, apply(params, np.array([999, 9], np.int32)))


def test_widths_depths_and_attention_are_config_fields():
    def count(cfg):
        shapes = jax.eval_shape(unet.make_model(cfg).init, jax.random.PRNGKey(0),
                                jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32))
        return layers.count_params(shapes)
    base = count(tiny())
    assert count(tiny(channels=16)) > base
    assert count(tiny(num_res_blocks=2)) > base
    assert count(tiny(attention_resolutions=())) < base


def test_timestep_embedding_is_sinusoidal():
    emb = np.asarray(jax.jit(unet.timestep_embedding, static_argnums=1)(np.array([0.0, 3.0]), 8))
    assert emb.shape == (2, 8)
    assert np.allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
    assert float(emb[1, 0]) == pytest.approx(np.cos(3.0))


def test_bad_group_count_is_refused():
    with pytest.raises(ValueError, match="norm_groups=3 does not divide"):
        unet.make_model(tiny(norm_groups=3))
