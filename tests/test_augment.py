import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import augment

KEY = jax.random.key(0)


def _cfg(**fields):
    cfg = augment.default_config()
    cfg.update(fields)
    return cfg


def _dots(batch: int, row: int = 14, col: int = 14) -> jax.Array:
    """Background images with one bright pixel at (row, col)."""
    x = np.full((batch, 28, 28, 1), -1.0, np.float32)
    x[:, row, col, 0] = 1.0
    return jnp.asarray(x)


def _dot_shifts(out: jax.Array, row: int = 14, col: int = 14) -> np.ndarray:
    """(dy, dx) per example of where the bright pixel went."""
    flat = np.asarray(out)[..., 0].reshape(out.shape[0], -1).argmax(1)
    return np.stack([flat // 28 - row, flat % 28 - col], 1)


def test_identity_when_off():
    x = _dots(4)
    assert not augment.enabled(augment.default_config())
    assert augment.apply(x, KEY, augment.default_config()) is x
    assert augment.enabled(_cfg(translate=1)) and augment.enabled(_cfg(hflip=True))


def test_translate_moves_each_example_within_range():
    cfg = _cfg(translate=3)
    x = _dots(256)
    out = augment.apply(x, KEY, cfg)
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = _dot_shifts(out)
    # Every shift in [-3, 3] is drawn (catches an exclusive upper bound), and none beyond.
    assert set(shifts[:, 0]) == set(range(-3, 4)) and set(shifts[:, 1]) == set(range(-3, 4))
    np.testing.assert_array_equal((out > 0).sum((1, 2, 3)), 1)  # the dot stays in the frame
    assert len({tuple(s) for s in shifts}) > 20  # per-example, not one shift for the batch
    np.testing.assert_array_equal(out, augment.apply(x, KEY, cfg))
    assert not np.array_equal(out, augment.apply(x, jax.random.key(1), cfg))


def test_crop_pad_keeps_shape_and_background():
    cfg = _cfg(crop_pad=2)
    blank = jnp.full((8, 28, 28, 1), -1.0)
    np.testing.assert_array_equal(augment.apply(blank, KEY, cfg), blank)
    out = augment.apply(_dots(128), KEY, cfg)
    assert out.shape == (128, 28, 28, 1)
    shifts = _dot_shifts(out)
    assert np.abs(shifts).max() == 2 and (out > 0).sum() == 128


def test_hflip_gives_input_or_mirror_and_both_occur():
    x = jax.random.uniform(jax.random.key(3), (64, 28, 28, 1), minval=-1.0, maxval=1.0)
    out = np.asarray(augment.apply(x, KEY, _cfg(hflip=True)))
    same = (out == np.asarray(x)).all((1, 2, 3))
    mirrored = (out == np.asarray(x)[:, :, ::-1]).all((1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_jit_and_vmap_over_members():
    cfg = _cfg(crop_pad=1, translate=2, hflip=True)
    x = jax.random.uniform(jax.random.key(3), (3, 8, 28, 28, 1), minval=-1.0, maxval=1.0)
    keys = jax.random.split(KEY, 3)
    out = np.asarray(jax.jit(jax.vmap(lambda xs, k: augment.apply(xs, k, cfg)))(x, keys))
    for m in range(3):
        np.testing.assert_allclose(out[m], augment.apply(x[m], keys[m], cfg))
    assert not np.array_equal(out[0], out[1])  # members' keys differ, so do their transforms


def test_gradient_counts_pixels_kept_in_frame():
    # One program for both: eagerly, the gradient's ~40 ops each compile on their own. (The
    # other tests stay eager: jitted, XLA:CPU fuses `apply`'s random draws into its output loops,
    # and the program compiles as slowly as its ops do one by one.)
    f = lambda x: augment.apply(x, KEY, _cfg(crop_pad=2, translate=3, hflip=True))
    grad, out = jax.jit(lambda x: (jax.grad(lambda x: f(x).sum())(x), f(x)))(
        np.ones((32, 28, 28, 1), np.float32))
    grad = np.asarray(grad)
    kept = (np.asarray(out) > 0).sum((1, 2, 3))  # output pixels from the input
    assert np.isfinite(grad).all() and set(np.unique(grad)) <= {0.0, 1.0}
    np.testing.assert_array_equal(grad.sum((1, 2, 3)), kept)
    assert (kept < 28 * 28).any()  # some pixels were shifted out, so the check is not trivial


@pytest.mark.parametrize("field, value", [
    ("translate", 14), ("translate", -1), ("crop_pad", 20), ("crop_pad", -2)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"augment\.{field}={value} .*Fix: use 0 \(off\) to 13"):
        augment.apply(_dots(2), KEY, _cfg(**{field: value}))
