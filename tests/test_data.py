import gzip
import hashlib
import os
import struct
import urllib.error

import jax
import numpy as np
import pytest
from conftest import make_mnist_dir, write_idx

from jaxgen import data
from jaxgen.errors import UserError


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(str(tmp_path / "a"), array, compress)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "a")), array)


def _raw_idx(array):
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.tobytes()


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x12\x34" + raw[2:], "bad magic number"),
    (lambda raw: raw[:2] + b"\x07" + raw[3:], "bad magic number"),
    (lambda raw: raw[:-5], "truncated"),
    (lambda raw: raw + b"\x00\x00", "trailing bytes"),
    (lambda raw: raw[:6], "truncated header"),
    (lambda raw: b"", "bad magic number"),
])
def test_read_idx_rejects_damaged_files(tmp_path, damage, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(damage(_raw_idx(np.zeros((3, 28, 28), np.uint8))))
    with pytest.raises(UserError, match=message):
        data.read_idx(str(path))


def test_read_idx_rejects_truncated_gzip(tmp_path):
    packed = gzip.compress(_raw_idx(np.zeros((50, 28, 28), np.uint8)))
    path = tmp_path / "x.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(UserError, match="damaged or truncated gzip"):
        data.read_idx(str(path))


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_mnist_idx(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no mnist/ subfolder"):
        data.load_mnist_idx(str(tmp_path))
    (tmp_path / "mnist").mkdir()
    with pytest.raises(UserError, match="lacks train-images-idx3-ubyte"):
        data.load_mnist_idx(str(tmp_path))


def test_image_and_label_counts_must_match(tmp_path):
    root = make_mnist_dir(str(tmp_path), n_train=20, n_test=10)
    write_idx(os.path.join(root, "mnist", "train-labels-idx1-ubyte.gz"), np.zeros(19, np.uint8))
    with pytest.raises(UserError, match="counts must match"):
        data.load_mnist_idx(root)


def test_wrong_image_size_is_rejected(tmp_path):
    root = make_mnist_dir(str(tmp_path), n_train=20, n_test=10)
    write_idx(os.path.join(root, "mnist", "t10k-images-idx3-ubyte.gz"),
              np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(UserError, match=r"expected \(N, 28, 28\)"):
        data.load_mnist_idx(root)


def test_uncompressed_files_and_data_dir_pointing_at_mnist(tmp_path):
    root = make_mnist_dir(str(tmp_path), n_train=20, n_test=10)
    folder = os.path.join(root, "mnist")
    for name in os.listdir(folder):  # gunzip every file in place
        with gzip.open(os.path.join(folder, name)) as f:
            raw = f.read()
        os.remove(os.path.join(folder, name))
        with open(os.path.join(folder, name[:-3]), "wb") as f:
            f.write(raw)
    arrays = data.load_mnist_idx(folder)  # the mnist/ folder itself also works
    assert arrays["train_images"].shape == (20, 28, 28)


def test_shared_mnist_splits_as_the_reference(shared_data_dir):
    splits = data.mnist_splits(shared_data_dir)
    assert splits.train_images.shape == (55000, 28, 28, 1)
    assert splits.val_images.shape == (5000, 28, 28, 1)
    assert splits.test_images.shape == (10000, 28, 28, 1)
    full = data.load_mnist(shared_data_dir)["train_images"]
    # TF's read_data_sets: validation is the first 5,000 of the training file, training the rest.
    np.testing.assert_array_equal(splits.val_images[..., 0], full[:5000])
    np.testing.assert_array_equal(splits.train_images[0, ..., 0], full[5000])
    assert np.bincount(splits.train_labels, minlength=10).min() > 4000
    capped = data.mnist_splits(shared_data_dir, train_examples=1000)
    assert capped.train_images.shape[0] == 1000
    np.testing.assert_array_equal(capped.train_images[..., 0], full[5000:6000])


def test_too_few_images_for_validation(tmp_path):
    root = make_mnist_dir(str(tmp_path), n_train=50, n_test=10)
    with pytest.raises(UserError, match="too few"):
        data.mnist_splits(root, val_examples=50)


def test_scaling_and_permutation():
    x = np.array([0, 127, 255], np.uint8)
    np.testing.assert_allclose(data.to_float(x), [-1.0, -1 / 255, 1.0], atol=1e-6)
    np.testing.assert_array_equal(data.to_uint8(data.to_float(x)), x)
    key = jax.random.PRNGKey(3)
    p0, p0b, p1 = (np.asarray(data.epoch_permutation(key, e, 100)) for e in (0, 0, 1))
    np.testing.assert_array_equal(p0, p0b)
    assert not np.array_equal(p0, p1)
    np.testing.assert_array_equal(np.sort(p0), np.arange(100))
    assert data.steps_per_epoch(55000, 100) == 550


def test_env_var_and_the_download_fallback(monkeypatch, tmp_path):
    """With no data folder the four original files are downloaded into the cache, checked by
    sha256, and read; a damaged download or no network is a clear error that keeps nothing.
    The network is replaced by a server of local files (and their sums)."""
    root = make_mnist_dir(str(tmp_path / "src"), n_train=20, n_test=10)
    monkeypatch.setenv(data.DATA_DIR_ENV, root)
    assert data.resolve_data_dir("") == root
    assert data.resolve_data_dir("/flag") == "/flag"
    monkeypatch.delenv(data.DATA_DIR_ENV)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    served = os.path.join(root, "mnist")
    sums = {name: (os.path.getsize(os.path.join(served, name)),
                   hashlib.sha256(open(os.path.join(served, name), "rb").read()).hexdigest())
            for name in data.MNIST_DOWNLOADS}
    monkeypatch.setattr(data, "MNIST_DOWNLOADS", sums)
    fetched = []

    def serve(url):
        assert url.startswith(data.MNIST_URL)
        fetched.append(url)
        return open(os.path.join(served, url[len(data.MNIST_URL):]), "rb")

    monkeypatch.setattr(data, "_urlopen", serve)
    folder = data.check_mnist("")
    assert folder == str(tmp_path / "cache" / "datasets") and len(fetched) == 4
    assert data.load_mnist_idx(folder)["train_images"].shape == (20, 28, 28)
    data.download_mnist()  # whole files with the right sums are not fetched again
    assert len(fetched) == 4

    # A damaged download: refused, and no file is left that looks whole.
    other = str(tmp_path / "other")
    name = "t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(data.MNIST_DOWNLOADS, name, (sums[name][0], "0" * 64))
    with pytest.raises(UserError, match=f"download of {name} is damaged"):
        data.download_mnist(other)
    assert name not in os.listdir(os.path.join(other, "mnist"))
    assert not [f for f in os.listdir(os.path.join(other, "mnist")) if f.endswith(".part")]

    def offline(url):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data, "_urlopen", offline)
    with pytest.raises(UserError, match="could not be downloaded.*--data_dir"):
        data.download_mnist(str(tmp_path / "offline"))
