import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models import cgan, layers

Z_DIM = 8
LABELS = jnp.arange(10, dtype=jnp.int32)


def key(seed: int) -> jax.Array:
    """An rbg key: XLA compiles Flax's initializers in a few seconds on CPU with it, against
    about 15 s with the default threefry."""
    return jax.random.key(seed, impl="rbg")


def uniform(seed: int, shape) -> jax.Array:
    """Test inputs in [-1, 1], drawn by NumPy (nothing to compile)."""
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def tiny_config(**overrides):
    m = cgan.default_model_config()
    m.cond, m.embed_dim, m.g_width, m.d_channels = "embed", 3, 4, (4, 8)
    for field, value in overrides.items():
        m[field] = value
    return m


def init(g, d, z_dim=Z_DIM, seed=0):
    labels = jnp.zeros((2,), jnp.int32)
    g_vars = g.init(key(seed), jnp.zeros((2, z_dim)), train=False, labels=labels)
    d_vars = d.init({"params": key(seed + 1), "dropout": key(seed + 2)},
                    jnp.zeros((2, 28, 28, 1)), labels=labels)
    return g_vars, d_vars


@functools.partial(jax.jit, static_argnums=(0, 4))
def generate(g, g_vars, z, labels, train=False):
    """G's images, jitted (one compile costs less than running its many small ops eagerly)."""
    if train:
        return g.apply(g_vars, z, train=True, labels=labels, mutable=["batch_stats"])
    return g.apply(g_vars, z, train=False, labels=labels)


@functools.partial(jax.jit, static_argnums=0)
def discriminate(d, d_vars, x, labels, dropout_key=None):
    """D's logits on batch statistics, jitted; dropout on when given a key."""
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return d.apply(d_vars, x, deterministic=dropout_key is None, labels=labels, rngs=rngs,
                   mutable=["batch_stats"])[0]


@functools.cache
def _build(overrides):
    g, d = cgan.make_models(tiny_config(**dict(overrides)))
    return g, d, *jax.jit(functools.partial(init, g, d))()


def build(**overrides):
    """Tiny G, D and their variables, initialized once per config (compiling is the slow part)."""
    return _build(tuple(sorted(overrides.items())))


def build_shapes(**overrides):
    """Tiny G, D and the shapes of their variables, without computing them."""
    g, d = cgan.make_models(tiny_config(**overrides))
    return g, d, *jax.eval_shape(lambda: init(g, d))


def g_param_count(z_dim, cond_in, embed_params, w, depth):
    """Embed, Dense [z, c] -> 7*7*2w, its per-unit BN (scale, bias), ConvT 2w -> w (3x3) + BN,
    (depth - 1) x [Conv w -> w (3x3) + BN], ConvT w -> 1 (3x3)."""
    units = 7 * 7 * 2 * w
    return (embed_params + (z_dim + cond_in) * units + units + 2 * units
            + 9 * 2 * w * w + w + 2 * w
            + (depth - 1) * (9 * w * w + w + 2 * w)
            + 9 * w + 1)


def d_param_count(channels, cond_in, embed_params, projection):
    """Conv c_{i-1} -> c_i (3x3) + BN per layer; h = 7*7*c_last (two stride-2 convs);
    concat: Embed + Dense [h, c] -> 1; projection: Dense h -> 1 + Embed(10, h)."""
    convs = sum(9 * c_in * c + c + 2 * c for c_in, c in zip((1, *channels), channels))
    h = 7 * 7 * channels[-1]
    if projection:
        return convs + h + 1 + 10 * h
    return convs + embed_params + h + cond_in + 1


def cond_size(m):
    """(size of c(y), parameters of its embedding)."""
    return (m.embed_dim, 10 * m.embed_dim) if m.cond == "embed" else (10, 0)


@pytest.mark.parametrize("cond", ["embed", "onehot"])
@pytest.mark.parametrize("projection", [False, True])
def test_shapes_and_parameter_counts(cond, projection):
    m = tiny_config(cond=cond, projection=projection)
    g, d, g_vars, d_vars = build_shapes(cond=cond, projection=projection)
    cond_in, embed_params = cond_size(m)
    assert layers.count_params(g_vars["params"]) == g_param_count(Z_DIM, cond_in, embed_params,
                                                                   m.g_width, m.g_depth)
    assert layers.count_params(d_vars["params"]) == d_param_count(m.d_channels, cond_in,
                                                                   embed_params, projection)
    # G's first batch norm is per unit of the Dense, before the reshape
    assert g_vars["batch_stats"]["BatchNorm_0"]["mean"].shape == (7 * 7 * 2 * m.g_width,)
    z = jax.ShapeDtypeStruct((10, Z_DIM), jnp.float32)
    x = jax.eval_shape(lambda v, z: g.apply(v, z, train=False, labels=LABELS), g_vars, z)
    assert x.shape == (10, 28, 28, 1)
    logits, _ = jax.eval_shape(lambda v, x: d.apply(v, x, True, LABELS, mutable=["batch_stats"]),
                               d_vars, x)
    assert logits.shape == (10,)


def test_forward_pass_in_train_mode():
    g, d, g_vars, d_vars = build()
    z = uniform(3, (10, Z_DIM))
    x, new = generate(g, g_vars, z, LABELS, True)
    assert x.shape == (10, 28, 28, 1)
    assert float(np.abs(x).max()) <= 1.0
    assert float(np.abs(x).max()) > 0.0
    # G's inputs, then the moving mean of its first batch norm (from 0, momentum 0.99), in NumPy
    params = jax.tree.map(np.asarray, g_vars["params"])
    h = np.concatenate([z, params["label_embed"]["embedding"][np.asarray(LABELS)]], -1)
    h = h @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]
    np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.01 * h.mean(0),
                               rtol=1e-4, atol=1e-6)
    logits = discriminate(d, d_vars, x, LABELS, key(4))
    assert logits.shape == (10,)
    assert bool(np.all(np.isfinite(logits)))


def test_default_parameter_counts_as_documented():
    m = cgan.default_model_config()
    assert m.arch == "cgan" and m.num_classes == 10
    assert (m.cond, m.g_width, m.g_depth, m.d_channels, m.projection) == ("onehot", 64, 1,
                                                                          (32, 64), False)
    expected = {("onehot", False): (783_233, 22_155), ("embed", False): (821_025, 22_321),
                ("embed", True): (821_025, 53_505)}
    for (cond, projection), (g_count, d_count) in expected.items():
        m.cond, m.projection = cond, projection
        cond_in, embed_params = cond_size(m)
        assert g_count == g_param_count(100, cond_in, embed_params, m.g_width, m.g_depth)
        assert d_count == d_param_count(m.d_channels, cond_in, embed_params, projection)
        g, d = cgan.make_models(m)
        g_vars, d_vars = jax.eval_shape(lambda: init(g, d, z_dim=100))  # noqa: B023
        assert layers.count_params(g_vars["params"]) == g_count
        assert layers.count_params(d_vars["params"]) == d_count


def test_onehot_against_embedding():
    _, _, ge_vars, de_vars = build_shapes(cond="embed", embed_dim=5)
    _, _, go_vars, do_vars = build_shapes(cond="onehot", embed_dim=5)
    w, e = tiny_config().g_width, 5
    units = 7 * 7 * 2 * w
    # the embedding table, and e - 10 inputs of the first Dense, each with `units` weights
    assert (layers.count_params(ge_vars["params"]) - layers.count_params(go_vars["params"])
            == 10 * e + (e - 10) * units)
    assert (layers.count_params(de_vars["params"]) - layers.count_params(do_vars["params"])
            == 10 * e + (e - 10))
    assert "label_embed" not in go_vars["params"] and "label_embed" not in do_vars["params"]
    assert ge_vars["params"]["label_embed"]["embedding"].shape == (10, e)
    assert go_vars["params"]["Dense_0"]["kernel"].shape == (Z_DIM + 10, units)
    assert ge_vars["params"]["Dense_0"]["kernel"].shape == (Z_DIM + e, units)
    # G's input is [z, one_hot(y)]: label k adds row Z_DIM + k of the first Dense's kernel
    g, _, go_vars, _ = build(cond="onehot")
    z = uniform(0, (10, Z_DIM))
    _, state = jax.jit(lambda v, z: g.apply(v, z, train=False, labels=LABELS,
                                            capture_intermediates=True,
                                            mutable=["intermediates"]))(go_vars, z)
    dense, z = jax.tree.map(np.asarray, (go_vars["params"]["Dense_0"], z))
    expected = (z @ dense["kernel"][:Z_DIM] + dense["kernel"][Z_DIM:][np.asarray(LABELS)]
                + dense["bias"])
    np.testing.assert_allclose(state["intermediates"]["Dense_0"]["__call__"][0], expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cond", ["embed", "onehot"])
def test_conditioning_changes_the_images(cond):
    g, _, g_vars, _ = build(cond=cond)
    z = jnp.tile(uniform(1, (1, Z_DIM)), (10, 1))
    x = generate(g, g_vars, z, LABELS)
    np.testing.assert_array_equal(x, generate(g, g_vars, z, LABELS))
    # the same z under ten labels: ten different images
    x = np.asarray(x)
    distances = np.abs(x[:, None] - x[None]).max(axis=(2, 3, 4))
    assert float(distances[~np.eye(10, dtype=bool)].min()) > 1e-4
    # with moving averages each image depends on its own label only
    relabeled = generate(g, g_vars, z, LABELS.at[0].set(5))
    np.testing.assert_allclose(relabeled[5], relabeled[0], atol=1e-6)
    np.testing.assert_array_equal(relabeled[1:], x[1:])


def test_conditional_sampling():
    sample = jax.jit(cgan.sample, static_argnums=(0, 4, 5))
    g, _, g_vars, _ = build()
    labels = jnp.array([3, 3, 7, 1, 0, 9, 2], jnp.int32)
    sample_key = key(5)
    x = sample(g, g_vars, sample_key, labels, Z_DIM)
    assert x.shape == (7, 28, 28, 1)
    np.testing.assert_array_equal(x, sample(g, g_vars, sample_key, labels, Z_DIM))
    assert not np.allclose(x, sample(g, g_vars, sample_key, (labels + 1) % 10, Z_DIM))
    # the two 3s have different z: different images
    assert not np.allclose(x[0], x[1])
    # train=True: batch statistics, so the images differ from the moving-average ones
    x_train = sample(g, g_vars, sample_key, labels, Z_DIM, train=True)
    assert x_train.shape == (7, 28, 28, 1) and not np.allclose(x_train, x)


def test_label_gradient_reaches_only_the_used_embeddings():
    _, d, _, d_vars = build()
    x = uniform(0, (6, 28, 28, 1))
    labels = jnp.array([0, 0, 2, 2, 4, 4], jnp.int32)

    def mean_logit(params):
        logits, _ = d.apply({**d_vars, "params": params}, x, deterministic=True, labels=labels,
                            mutable=["batch_stats"])
        return logits.mean()

    grad = jax.jit(jax.grad(mean_logit))(d_vars["params"])["label_embed"]["embedding"]
    used = np.isin(np.arange(10), [0, 2, 4])
    grad = np.asarray(grad)
    assert np.all(np.abs(grad[used]).max(axis=1) > 0)
    np.testing.assert_array_equal(grad[~used], 0.0)


def test_projection_discriminator_by_hand():
    _, d, _, d_vars = build(projection=True, norm="none")
    params = d_vars["params"]
    x = uniform(0, (10, 28, 28, 1))
    logits = discriminate(d, d_vars, x, LABELS)
    assert not np.allclose(logits, discriminate(d, d_vars, x, LABELS[::-1]))
    # h by hand: two stride-2 convolutions, each followed by leaky ReLU 0.2, then flatten
    @jax.jit
    def features(params, h):
        for i, channels in enumerate((4, 8)):
            conv = layers.Conv(channels, (3, 3), strides=(2, 2))
            h = jax.nn.leaky_relu(conv.apply({"params": params[f"Conv_{i}"]}, h), 0.2)
        return h.reshape(h.shape[0], -1)

    h = np.asarray(features(params, x))
    assert h.shape == (10, 7 * 7 * 8)
    params = jax.tree.map(np.asarray, params)
    v = params["projection"]["embedding"][np.asarray(LABELS)]  # (10, dim h): a row per label
    dense = params["Dense_0"]
    expected = (h @ dense["kernel"] + dense["bias"])[:, 0] + (v * h).sum(-1)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    # dropout is on unless deterministic
    with_dropout = discriminate(d, d_vars, x, LABELS, key(1))
    assert not np.allclose(with_dropout, logits)


@pytest.mark.parametrize("projection", [False, True])
def test_discriminator_needs_labels(projection):
    _, d = cgan.make_models(tiny_config(projection=projection))
    keys = {"params": key(0), "dropout": key(1)}
    x = jnp.zeros((2, 28, 28, 1))
    with pytest.raises(ValueError, match="needs labels"):
        jax.eval_shape(d.init, keys, x)
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        jax.eval_shape(functools.partial(d.init, labels=jnp.zeros((3,), jnp.int32)), keys, x)


def test_depth_adds_convolutions_at_14x14():
    _, _, v1, _ = build_shapes(g_depth=1)
    g3, _, v3, _ = build_shapes(g_depth=3)
    w = tiny_config().g_width
    # two Conv w -> w (3x3, with bias) and their batch norms (scale and bias; mean and var)
    assert (layers.count_params(v3["params"]) - layers.count_params(v1["params"])
            == 2 * (9 * w * w + w) + 2 * 2 * w)
    assert (layers.count_params(v3["batch_stats"]) - layers.count_params(v1["batch_stats"])
            == 2 * 2 * w)
    assert "Conv_0" not in v1["params"]
    assert v3["params"]["Conv_0"]["kernel"].shape == (3, 3, w, w)
    assert v3["params"]["Conv_1"]["kernel"].shape == (3, 3, w, w)
    assert "Conv_2" not in v3["params"]
    # the extra convolutions act at 14x14, between the two transposed convolutions
    _, state = jax.eval_shape(
        lambda v: g3.apply(v, jnp.zeros((10, Z_DIM)), train=False, labels=LABELS,
                           capture_intermediates=True, mutable=["intermediates"]), v3)
    for name in ("Conv_0", "Conv_1", "ConvTranspose_0"):
        assert state["intermediates"][name]["__call__"][0].shape == (10, 14, 14, w)
    assert state["intermediates"]["__call__"][0].shape == (10, 28, 28, 1)


@pytest.mark.parametrize("field, value, message", [
    ("cond", "film", r"model\.cond='film': choose one of embed, onehot"),
    ("embed_dim", 0, r"model\.embed_dim=0: must be an int >= 1"),
    ("g_depth", 0, r"model\.g_depth=0: must be an int >= 1"),
    ("g_width", 0, r"model\.g_width=0"),
    ("norm", "layer", r"model\.norm='layer': choose one of batch, none"),
    ("d_channels", (), r"model\.d_channels"),
    ("d_dropout", 1.0, r"model\.d_dropout=1\.0: must be a float in \[0, 1\)"),
    ("activation", "gelu2", r"model\.activation: unknown activation"),
    ("kernel_init", "xavier", r"model\.kernel_init: unknown initializer"),
])
def test_make_models_rejects_bad_configs(field, value, message):
    m = cgan.default_model_config()
    m[field] = value
    with pytest.raises(ValueError, match=message):
        cgan.make_models(m)


def test_make_models_passes_the_config_through():
    m = tiny_config(cond="onehot", g_depth=2, d_dropout=0.25, projection=True, slope=0.1)
    g, d = cgan.make_models(m)
    assert (g.cond, g.width, g.depth, g.slope, g.embed_dim) == ("onehot", 4, 2, 0.1, 3)
    assert (d.channels, d.dropout, d.projection, d.num_classes) == ((4, 8), 0.25, True, 10)
