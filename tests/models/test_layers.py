import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models import layers


def normal(seed: int, shape) -> jax.Array:
    """Test inputs drawn by NumPy (nothing to compile; each of JAX's draws is a program)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_dropout_matches_flax_dropout_exactly_in_values_and_gradients():
    x = normal(0, (8, 50))
    key = jax.random.PRNGKey(7)

    def run(module, x):
        return module.apply({}, x, rngs={"dropout": key})

    ours = jax.jit(lambda x: run(layers.Dropout(0.5), x))(x)
    theirs = jax.jit(lambda x: run(nn.Dropout(0.5, deterministic=False), x))(x)
    np.testing.assert_array_equal(ours, theirs)
    assert 0.3 < float((ours == 0).mean()) < 0.7
    grad = lambda module: jax.jit(jax.grad(lambda x: (run(module, x) ** 2).sum()))(x)
    np.testing.assert_array_equal(grad(layers.Dropout(0.5)),
                                  grad(nn.Dropout(0.5, deterministic=False)))
    np.testing.assert_array_equal(layers.Dropout(0.5, deterministic=True).apply({}, x), x)


def test_stored_returns_its_input_unchanged_for_every_dtype_also_under_vmap():
    rng = np.random.default_rng(3)
    mask = jnp.asarray(rng.random((4, 9)) < 0.5)
    noise = rng.standard_normal((4, 9)).astype(np.float32)
    noise[0, 0] = np.nan  # a NaN first is kept too
    noise = jnp.asarray(noise)
    ints = jnp.asarray(rng.integers(-5, 5, (4, 9)), jnp.int32)
    jitted, vmapped = jax.jit(layers.stored), jax.jit(jax.vmap(layers.stored))
    for x in (mask, noise, ints, jnp.zeros((3,), bool)):
        np.testing.assert_array_equal(jitted(x), x)
        np.testing.assert_array_equal(vmapped(x), x)
        assert jitted(x).dtype == x.dtype


def test_conv2d_by_slices_and_by_xla_are_the_same_function():
    both = jax.jit(lambda x, kernel, stride: (layers.conv2d(x, kernel, stride, method="xla"),
                                              layers.conv2d(x, kernel, stride)),
                   static_argnums=2)
    for shape, kernel_shape, stride in (((2, 16, 16, 3), (3, 3, 3, 4), 1),
                                        ((2, 14, 14, 3), (3, 3, 3, 4), 2),
                                        ((1, 7, 7, 2), (1, 1, 2, 5), 1)):
        np.testing.assert_allclose(*both(normal(5, shape), normal(6, kernel_shape), stride),
                                   rtol=1e-5, atol=1e-5)



def tf_same_conv2d_transpose(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """TF's `conv2d_transpose(x, kernel (kh, kw, out, in), strides=stride, padding="SAME")`,
    written out as a scatter-add: the adjoint of TF's SAME conv2d, which reads input row
    `i * stride + a - pad` for output row i and kernel row a, with `pad` the floor half of the
    total padding `max((h - 1) * stride + kh - H, 0)` (TF puts the odd one after). So input
    pixel (i, j) adds `x[i, j] @ kernel[a, b].T` to output pixel (i*s + a - pad_h, j*s + b - pad_w)
    where that lies inside the H x W output."""
    b, h, w, _ = x.shape
    kh, kw, features, _ = kernel.shape
    out_h, out_w = h * stride, w * stride
    pad_h = max((h - 1) * stride + kh - out_h, 0) // 2
    pad_w = max((w - 1) * stride + kw - out_w, 0) // 2
    out = np.zeros((b, out_h, out_w, features))
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for c in range(kw):
                    p, q = i * stride + a - pad_h, j * stride + c - pad_w
                    if 0 <= p < out_h and 0 <= q < out_w:
                        out[:, p, q] += x[:, i, j] @ kernel[a, c].T
    return out


@pytest.mark.parametrize("h, w, k, s", [(7, 7, 3, 2), (5, 6, 3, 1), (4, 4, 4, 2), (3, 3, 5, 2)])
def test_conv_transpose_is_tensorflows_same_conv2d_transpose(h, w, k, s):
    """The layer the DCGAN uses (`layers.ConvTranspose`) against TF's SAME alignment, written out
    in numpy: the DCGAN's 3x3 stride-2 shape (total padding 1, placed after), stride 1, an even
    kernel and a 5x5 one (padding on both sides), with a bias."""
    layer = layers.ConvTranspose(3, (k, k), strides=(s, s),
                                 bias_init=nn.initializers.constant(0.1))
    @jax.jit
    def init_and_apply(x):
        params = layer.init(jax.random.PRNGKey(1), x)
        return params, layer.apply(params, x)

    x = normal(0, (2, h, w, 4))
    params, got = init_and_apply(x)
    kernel = np.asarray(params["params"]["kernel"], np.float64)
    want = tf_same_conv2d_transpose(np.asarray(x, np.float64), kernel, s) + 0.1
    assert got.shape == (2, h * s, w * s, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h, w, k, s", [(7, 7, 3, 2), (5, 6, 3, 1), (4, 4, 4, 2)])
def test_transposed_convolution_gradient_is_autodiffs_bit_for_bit(h, w, k, s):
    """`overlap_add`'s own gradient (the cotangent's taps, stored) against autodiff through
    its forward pass, for the DCGAN's stride-2 shapes, an odd size, stride 1 and a 4x4 kernel;
    the second derivative once (a penalty on a gradient differentiates twice)."""
    out_hw = (h * s, w * s)
    y, g = normal(0, (2, h, w, k * k, 3)), normal(1, (2, *out_hw, 3))

    def ours(y):
        return layers.overlap_add(y, out_hw, (k, k), s)

    def autodiff(y):
        return layers.overlap_add_autodiff(y, out_hw, (k, k), s)

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_vjp(f, y, g):  # both sides alike: one jitted program each
        out, pullback = jax.vjp(f, y)
        return out, pullback(g)[0]

    (value, grad), (want_value, want_grad) = (value_and_vjp(f, y, g) for f in (ours, autodiff))
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)
    if k == 3 and s == 2:
        def curvature(f):
            return jax.jit(jax.grad(lambda y: (jax.grad(lambda y: (f(y) ** 2).sum())(y) ** 2)
                                    .sum()))

        np.testing.assert_allclose(curvature(ours)(y), curvature(autodiff)(y), rtol=1e-6)


def test_minibatch_std_groups_samples_i_and_i_plus_b_over_g():
    x = normal(2, (4, 2, 2, 3))
    out = jax.jit(layers.minibatch_std, static_argnames="group_size")(x, group_size=2)
    np.testing.assert_array_equal(out[..., :3], x)
    x = np.asarray(x)  # the expected stds in NumPy: nothing to compile
    std = lambda a, b: float(np.sqrt(((x[a] - x[b]) / 2) ** 2 + 1e-8).mean())
    for sample, partner in [(0, 2), (1, 3), (2, 0), (3, 1)]:
        np.testing.assert_allclose(out[sample, ..., 3], std(sample, partner), rtol=1e-5)
