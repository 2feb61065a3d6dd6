import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models import dcgan, layers

# Flax's init and apply, jitted: one compile per (module, shapes, flags) costs far less than
# compiling each of their many small ops eagerly, and gives the same values.
STATIC = ("train", "mutable")
init = jax.jit(lambda m, *a, **k: m.init(*a, **k), static_argnums=0, static_argnames=STATIC)
apply = jax.jit(lambda m, *a, **k: m.apply(*a, **k), static_argnums=0, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init_both(g, d):
    return (g.init(jax.random.PRNGKey(0), jnp.zeros((2, 100)), train=False),
            d.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)},
                   jnp.zeros((2, 28, 28, 1))))


@pytest.fixture(scope="module")
def variables():
    """The full-size models' variables, compiled with XLA's backend optimizations, which the
    suite turns off (tests/conftest.py): drawing G's 13M random weights then takes 0.1 s instead
    of 3 s, for bit-identical values."""
    g, d = dcgan.Generator(), dcgan.Discriminator()
    optimized = {"xla_backend_optimization_level": 1}
    return g, d, *init_both.lower(g, d).compile(compiler_options=optimized)()


def test_parameter_counts_match_the_reference(variables):
    _, _, g_vars, d_vars = variables
    assert layers.count_params(g_vars["params"]) == 13_037_697
    assert layers.count_params(d_vars["params"]) == 87_425


def test_shapes_and_ranges(variables):
    g, d, g_vars, d_vars = variables
    z = jax.random.uniform(jax.random.PRNGKey(3), (4, 100), minval=-1, maxval=1)
    x = apply(g, g_vars, z, train=False)
    assert x.shape == (4, 28, 28, 1)
    assert float(np.abs(x).max()) <= 1.0
    logits = apply(d, d_vars, x, rngs={"dropout": jax.random.PRNGKey(4)},
                   mutable=("batch_stats",))[0]
    assert logits.shape == (4,)


def test_initialization_as_the_reference(variables):
    _, _, g_vars, _ = variables
    params = g_vars["params"]
    np.testing.assert_array_equal(params["Dense_1"]["bias"], np.float32(0.1))
    # Glorot uniform: U(-a, a), a = sqrt(6 / (in + out))
    kernel, limit = np.asarray(params["Dense_1"]["kernel"]), np.sqrt(6 / (1024 + 7 * 7 * 256))
    assert float(np.abs(kernel).max()) <= limit * (1 + 1e-6)
    assert float(kernel.std()) == pytest.approx(limit / np.sqrt(3), rel=0.01)


def test_batch_norm_is_tf_layer(variables):
    g, _, g_vars, _ = variables
    z = jax.random.uniform(jax.random.PRNGKey(5), (8, 100), minval=-1, maxval=1)
    _, new = apply(g, g_vars, z, train=True, mutable=("batch_stats",))
    h = np.asarray(z) @ np.asarray(g_vars["params"]["Dense_0"]["kernel"]) + 0.1  # BN 0's input
    expected = 0.01 * h.mean(0)  # moving mean starts at 0; momentum 0.99
    np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["mean"], expected, rtol=1e-4,
                               atol=1e-6)


def test_activations_and_initializers_by_name():
    x = jnp.array([-2.0, 3.0])
    np.testing.assert_allclose(layers.activation("leaky_relu", 0.2)(x), [-0.4, 3.0])
    np.testing.assert_allclose(layers.activation("relu")(x), [0.0, 3.0])
    with pytest.raises(ValueError, match="unknown activation"):
        layers.activation("gelu2")
    with pytest.raises(ValueError, match="unknown initializer"):
        layers.kernel_init("xavier")


def test_activations_elu_swish_and_he_initializer_scale():
    x = jnp.array([-1.0, 2.0])
    np.testing.assert_allclose(layers.activation("elu")(x), [np.expm1(-1.0), 2.0], rtol=1e-6)
    np.testing.assert_allclose(layers.activation("swish")(x), x / (1 + np.exp(-x)), rtol=1e-6)
    # He normal: std sqrt(2 / fan_in); Glorot normal: sqrt(2 / (fan_in + fan_out))
    he = layers.kernel_init("he_normal")(jax.random.PRNGKey(0), (400, 100))
    glorot = layers.kernel_init("glorot_normal")(jax.random.PRNGKey(0), (400, 100))
    assert float(he.std()) == pytest.approx(np.sqrt(2 / 400), rel=0.05)
    assert float(glorot.std()) == pytest.approx(np.sqrt(2 / 500), rel=0.05)


def test_normalization_can_be_switched_off():
    g, d = dcgan.Generator(hidden=16, base_channels=8, mid_channels=4, norm="none"), \
        dcgan.Discriminator(channels=(4, 8), norm="none")
    g_vars, d_vars = init_both(g, d)
    assert "batch_stats" not in g_vars and "batch_stats" not in d_vars
    assert not any("BatchNorm" in k for k in g_vars["params"])
    z = jax.random.uniform(jax.random.PRNGKey(3), (4, 100))
    # without batch norm a sample does not depend on the rest of its batch
    np.testing.assert_allclose(apply(g, g_vars, z, train=True)[:1],
                               apply(g, g_vars, z[:1], train=True), atol=1e-6)
    g = dcgan.Generator(hidden=4, base_channels=2, mid_channels=2, norm="layer")
    with pytest.raises(ValueError, match="unknown normalization"):
        jax.eval_shape(functools.partial(g.init, train=False), jax.random.PRNGKey(0),
                       jnp.zeros((2, 100)))


def test_rgb_images_and_a_minibatch_std_channel():
    """`model.image_channels=3`: G draws RGB images and D reads them; `model.d_minibatch_std`
    couples a sample's logit to the other members of its group only."""
    import ml_collections

    model = ml_collections.ConfigDict(dict(
        g_hidden=16, g_base_channels=8, g_mid_channels=4, d_channels=(4, 8), d_dropout=0.0,
        activation="leaky_relu", slope=0.2, kernel_init="glorot_uniform", bias_init=0.1,
        bn_momentum=0.99, bn_epsilon=1e-3, norm="none", image_channels=3, d_minibatch_std=2))
    g, d = dcgan.make_models(model)
    g_vars = init(g, jax.random.PRNGKey(0), jnp.zeros((2, 100)), train=False)
    images = apply(g, g_vars, jax.random.uniform(jax.random.PRNGKey(1), (4, 100)), train=True)
    assert images.shape == (4, 28, 28, 3)
    d_vars = init(d, {"params": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(3)}, images)
    rngs = {"dropout": jax.random.PRNGKey(4)}
    logits = np.asarray(apply(d, d_vars, images, rngs=rngs))
    flipped = np.array(images)  # a copy to edit in NumPy
    flipped[1] *= -1.0
    changed = np.asarray(apply(d, d_vars, flipped, rngs=rngs))
    moved = np.flatnonzero(np.abs(changed - logits) > 1e-6)
    assert set(moved) == {1, 3}  # groups are samples (0, 2) and (1, 3)
