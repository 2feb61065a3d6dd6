import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen.models import layers, stylegan

Z_DIM, W_DIM, MAPPING_LAYERS, BATCH = 8, 16, 2, 16
# Every apply in the behaviour tests has batch BATCH and these equal channels: eager ops are
# compiled once per shape, so one shape set keeps the module fast. (So G and D stay eager: jitted,
# each of the ~17 flag sets the tests apply G with compiles anew, 1-3 s each, more in all than
# the eager ops they share.) The parameter count test uses all-different channels (and only
# traces), so that a mix-up changes the count.
G_CHANNELS, D_CHANNELS = (8, 6, 5, 3), (3, 5, 6, 8)


def key(seed: int) -> jax.Array:
    """RBG keys: XLA compiles their samplers several times faster than threefry's on CPU, and
    eager ops compile once per shape, so this is most of the module's runtime."""
    return jax.random.key(seed, impl="rbg")


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    c = stylegan.default_model_config().to_dict()
    c.update(w_dim=W_DIM, mapping_layers=MAPPING_LAYERS, g_channels=(8, 8, 8, 8),
             d_channels=(8, 8, 8, 8), mbstd_group=2)
    c.update(overrides)
    return ml_collections.ConfigDict(c)


@pytest.fixture(scope="module")
def tiny():
    g, _ = stylegan.make_models(tiny_config())
    g_vars = g.init({"params": key(0), "noise": key(1)}, jnp.zeros((BATCH, Z_DIM)), train=False)
    return g, g_vars


def z_batch(seed: int = 3) -> jax.Array:
    return jax.random.normal(key(seed), (BATCH, Z_DIM))


def run_g(g, variables, z, **kwargs):
    """G's images and its ws (from the "intermediates" it sows), batch_stats left unchanged, as
    NumPy arrays: the checks on them compile nothing."""
    images, state = g.apply(variables, z, mutable=["intermediates"], **kwargs)
    return np.asarray(images), np.asarray(state["intermediates"]["ws"][0])


def with_noise_strength(params, value: float):
    return jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.full_like(v, value) if path[-1].key == "noise_strength" else v,
        params)


@pytest.mark.parametrize("kernel_size", [3, 1])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_equals_per_sample_convolution(kernel_size, demodulate):
    kx, kk, ks = jax.random.split(key(0), 3)
    x = jax.random.normal(kx, (3, 6, 5, 4))
    kernel = jax.random.normal(kk, (kernel_size, kernel_size, 4, 7))
    styles = jax.random.uniform(ks, (3, 4), minval=-2.0, maxval=2.0)
    expected = []
    for b in range(3):
        w = kernel * styles[b][None, None, :, None]
        if demodulate:
            w = w / jnp.sqrt(jnp.sum(w ** 2, axis=(0, 1, 2)) + 1e-8)
        expected.append(jax.lax.conv_general_dilated(
            x[b:b + 1], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST))
    got = stylegan.modulated_conv(x, kernel, styles, demodulate=demodulate)
    np.testing.assert_allclose(got, jnp.concatenate(expected), rtol=1e-4, atol=1e-4)


def test_demodulation_restores_unit_variance():
    @jax.jit
    def demodulated_and_raw():
        kx, kk, ks = jax.random.split(key(1), 3)
        x = jax.random.normal(kx, (4, 16, 16, 32))
        kernel = 5.0 * jax.random.normal(kk, (3, 3, 32, 16))
        styles = jnp.exp(jax.random.normal(ks, (4, 32)))  # scales spread over ~e^{+-2}
        return (stylegan.modulated_conv(x, kernel, styles),
                stylegan.modulated_conv(x, kernel, styles, demodulate=False))

    interior = (slice(None), slice(1, -1), slice(1, -1))  # away from the zero padding
    y, raw = (np.asarray(a)[interior] for a in demodulated_and_raw())
    assert float(y.std()) == pytest.approx(1.0, abs=0.05)
    per_sample = y.std(axis=(1, 2, 3))
    np.testing.assert_allclose(per_sample, 1.0, atol=0.1)
    assert float(raw.std()) > 10.0  # the check above is the demodulation's doing


def g_param_count(z_dim, w, layers_, c):
    mapping = (z_dim * w + w) + (layers_ - 1) * (w * w + w)
    const = 4 * 4 * c[0]
    # affine (w -> in, bias) + 3x3 kernel + noise strength + bias
    styled = lambda cin, cout: (w * cin + cin) + 9 * cin * cout + 1 + cout
    torgb = lambda cin: (w * cin + cin) + cin * 1 + 1
    convs = styled(c[0], c[0]) + sum(styled(c[i - 1], c[i]) + styled(c[i], c[i])
                                      for i in range(1, 4))
    return mapping + const + convs + sum(torgb(ch) for ch in c)


def d_param_count(c):
    from_rgb = 1 * c[0] + c[0]
    block = lambda cin, cout: (9 * cin * cin + cin) + (9 * cin * cout + cout) + cin * cout
    blocks = sum(block(c[i], c[i + 1]) for i in range(3))
    head = (9 * (c[3] + 1) * c[3] + c[3]) + (16 * c[3] * c[3] + c[3]) + (c[3] + 1)
    return from_rgb + blocks + head


def test_shapes_and_parameter_counts():
    """Traced only (`eval_shape`): the init call the trainer makes, with both RNG streams."""
    g, d = stylegan.make_models(tiny_config(g_channels=G_CHANNELS, d_channels=D_CHANNELS))
    keys = {"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(1)}
    g_vars = jax.eval_shape(lambda: g.init(keys, jnp.zeros((2, Z_DIM)), train=False))
    d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(2), jnp.zeros((2, 32, 32, 1))))
    assert layers.count_params(g_vars["params"]) == g_param_count(Z_DIM, W_DIM, MAPPING_LAYERS,
                                                                 G_CHANNELS)
    assert layers.count_params(d_vars["params"]) == d_param_count(D_CHANNELS)
    assert g_vars["batch_stats"]["w_avg"].shape == (W_DIM,)
    images, state = jax.eval_shape(lambda v: g.apply(
        v, jnp.zeros((5, Z_DIM)), train=True, rngs={"noise": jax.random.PRNGKey(3)},
        mutable=["batch_stats", "intermediates"]), g_vars)
    assert images.shape == (5, 32, 32, 1)
    assert state["intermediates"]["ws"][0].shape == (5, 11, W_DIM) and stylegan.num_ws(
        G_CHANNELS) == 11
    logits = jax.eval_shape(d.apply, d_vars, images)  # 5: not a multiple of the group
    assert logits.shape == (5,)
    with pytest.raises(ValueError, match="32x32"):
        jax.eval_shape(d.apply, d_vars, jnp.zeros((2, 28, 28, 1)))


def test_default_parameter_counts_follow_the_formula():
    c = stylegan.default_model_config()
    assert g_param_count(100, c.w_dim, c.mapping_layers, c.g_channels) == 275_163
    assert d_param_count(c.d_channels) == 218_417


def test_discriminator_couples_only_the_samples_of_a_group():
    """Minibatch std with group 2 over 16 samples: sample i's logit depends on sample i + 8."""
    _, d = stylegan.make_models(tiny_config())
    x = jax.random.normal(key(11), (BATCH, 32, 32, 1))
    d_vars = d.init(key(12), x)
    logits = np.asarray(d.apply(d_vars, x))
    assert logits.shape == (BATCH,) and bool(np.isfinite(logits).all())
    x = np.array(x)  # a copy to edit in NumPy
    x[3] *= 2.0
    changed = np.abs(np.asarray(d.apply(d_vars, x)) - logits) > 1e-5
    assert set(np.flatnonzero(changed)) == {3, 3 + BATCH // 2}


def test_upsample_is_bilinear():
    x = jax.random.normal(key(3), (2, 4, 5, 3))
    got, expected = jax.jit(lambda x: (stylegan.upsample2(x), jax.image.resize(
        x, (2, 8, 10, 3), method="bilinear")))(x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_equal_dense_and_conv_scale_their_parameters():
    x = jax.random.normal(key(4), (3, 64))
    dense = stylegan.EqualDense(48, lr_mul=0.01, bias_init=0.3)
    params = dense.init(key(5), x)["params"]
    np.testing.assert_array_equal(params["bias"], np.float32(0.3))
    kernel, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
    # stored at 1 / lr_mul so that the initial effective weight is N(0, 1 / fan_in)
    assert float(kernel.std()) == pytest.approx(100.0, rel=0.05)
    expected = np.asarray(x) @ (kernel * 0.01 / np.sqrt(64)) + bias * 0.01
    np.testing.assert_allclose(dense.apply({"params": params}, x), expected, rtol=1e-5,
                               atol=1e-5)

    x = jax.random.normal(key(6), (2, 5, 5, 4))
    conv = stylegan.EqualConv(6, 3, bias_init=0.2)
    params = conv.init(key(7), x)["params"]
    expected = jax.lax.conv_general_dilated(
        x, params["kernel"] / np.sqrt(3 * 3 * 4), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST) + 0.2
    np.testing.assert_allclose(conv.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-5)


def test_w_avg_update_and_truncation(tiny):
    g, g_vars = tiny
    g = g.clone(w_avg_beta=0.9)
    z = z_batch()
    _, ws = run_g(g, g_vars, z)
    w = ws[:, 0]
    # no update without train, or without mutable batch_stats
    _, state = g.apply(g_vars, z, train=False, mutable=["batch_stats"])
    np.testing.assert_array_equal(state["batch_stats"]["w_avg"], 0.0)
    g.apply(g_vars, z, train=True)  # batch_stats immutable: no error, nothing to update
    # the lerp toward the batch mean, from zeros and from a nonzero average
    _, state = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(state["batch_stats"]["w_avg"], 0.1 * w.mean(0), rtol=1e-5,
                               atol=1e-7)
    start = np.linspace(-1.0, 1.0, W_DIM, dtype=np.float32)
    variables = {"params": g_vars["params"], "batch_stats": {"w_avg": start}}
    _, state = g.apply(variables, z, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(state["batch_stats"]["w_avg"], 0.9 * start + 0.1 * w.mean(0),
                               rtol=1e-5, atol=1e-6)

    untruncated = np.asarray(g.apply(variables, z))
    np.testing.assert_array_equal(g.apply(variables, z, truncation=1.0), untruncated)
    collapsed = np.asarray(g.apply(variables, z, truncation=0.0))
    np.testing.assert_allclose(collapsed, np.broadcast_to(collapsed[:1], collapsed.shape),
                               rtol=1e-5, atol=1e-6)
    assert float(np.abs(untruncated - untruncated[:1]).max()) > 1e-3
    _, half = run_g(g, variables, z, truncation=0.5)
    np.testing.assert_allclose(half, np.broadcast_to(
        (start + 0.5 * (w - start))[:, None], half.shape), rtol=1e-5, atol=1e-6)


def test_style_mixing(tiny):
    g, g_vars = tiny
    z, rngs = z_batch(), {"noise": key(8)}
    mixing, plain = g.clone(mixing_prob=1.0), g.clone(mixing_prob=0.0)
    _, w = run_g(plain, g_vars, z)
    w = w[:, 0]
    mixed_images, ws = run_g(mixing, g_vars, z, train=True, rngs=rngs)
    plain_images = np.asarray(plain.apply(g_vars, z, train=True, rngs=rngs))
    assert float(np.abs(mixed_images - plain_images).max()) > 1e-3
    # every sample: w up to a cutoff in [1, 11), then one other w
    cutoffs = []
    for b in range(z.shape[0]):
        same = np.all(np.isclose(ws[b], w[b], atol=1e-6), axis=-1)
        cutoff = int(np.argmin(same))
        assert 1 <= cutoff < 11 and same[:cutoff].all() and not same[cutoff:].any()
        np.testing.assert_array_equal(ws[b, cutoff:], np.broadcast_to(ws[b, cutoff],
                                                                        ws[b, cutoff:].shape))
        cutoffs.append(cutoff)
    assert len(set(cutoffs)) > 3
    # mixing_prob 0.5: some samples mixed, some not
    _, ws = run_g(g.clone(mixing_prob=0.5), g_vars, z, train=True, rngs=rngs)
    mixed = np.abs(ws[:, -1] - w).max(-1) > 1e-6
    assert 3 <= mixed.sum() <= BATCH - 3
    # no noise RNG, or not training: no mixing
    np.testing.assert_array_equal(mixing.apply(g_vars, z, train=True),
                                  plain.apply(g_vars, z, train=True))
    _, ws = run_g(mixing, g_vars, z, train=True)
    np.testing.assert_array_equal(ws, np.broadcast_to(w[:, None], ws.shape))
    _, ws = run_g(mixing, g_vars, z, train=False, rngs=rngs)
    np.testing.assert_array_equal(ws, np.broadcast_to(w[:, None], ws.shape))


def test_noise_inputs(tiny):
    g, g_vars = tiny
    z = z_batch()
    noisy = {**g_vars, "params": with_noise_strength(g_vars["params"], 0.5)}
    a = np.asarray(g.apply(noisy, z, rngs={"noise": key(9)}))
    b = np.asarray(g.apply(noisy, z, rngs={"noise": key(10)}))
    assert float(np.abs(a - b).max()) > 1e-3
    np.testing.assert_array_equal(a, g.apply(noisy, z, rngs={"noise": key(9)}))
    # strengths start at zero: the noise RNG changes nothing
    np.testing.assert_array_equal(g.apply(g_vars, z, rngs={"noise": key(9)}), g.apply(g_vars, z))
    # no noise RNG: zero noise, whatever the strengths
    np.testing.assert_array_equal(g.apply(noisy, z), g.apply(g_vars, z))
    # noise off: no strengths at all
    g_off, _ = stylegan.make_models(tiny_config(noise=False))
    params = jax.eval_shape(lambda: g_off.init(key(0), z))["params"]
    assert layers.count_params(params) == layers.count_params(g_vars["params"]) - 7


@pytest.mark.parametrize("field, value", [
    ("g_channels", (8, 8, 8)), ("d_channels", (8, 8, 0, 8)), ("mixing_prob", 1.5),
    ("mixing_prob", -0.1), ("w_dim", 0), ("mapping_layers", 0), ("mbstd_group", 0),
    ("w_avg_beta", 1.2), ("mapping_lr_mul", 0.0), ("noise", "yes"),
])
def test_make_models_rejects_bad_config(field, value):
    with pytest.raises(ValueError, match=f"model.{field}="):
        stylegan.make_models(tiny_config(**{field: value}))


def test_default_config_builds_the_trainers_models():
    c = stylegan.default_model_config()
    assert (c.arch, c.norm) == ("stylegan", "none")
    g, d = stylegan.make_models(c)
    assert g.channels == (64, 64, 32, 16) and d.channels == (16, 32, 64, 64)
    assert stylegan.IMAGE_SIZE == 32
