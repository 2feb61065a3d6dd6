"""MNIST from its original IDX files (or TFDS), split as the reference study split it.

The data folder holds `mnist/` with the four IDX files, gzipped or not. It comes from `--data_dir`
or the `JAXGEN_DATA_DIR` environment variable; with neither, MNIST is read through
`tfds.data_source` (which downloads it on a machine with internet and never imports TensorFlow).

The whole data set lives on the device as uint8; batches are gathered there by index from a
permutation that depends only on (seed, epoch), so the data position needs no saving.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import UserError

DATA_DIR_ENV = "JAXGEN_DATA_DIR"
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_FIX_IDX = ("Fix: replace it with the original file (sha256 sums are listed in the MNIST README "
            "beside the data), or delete it and point --data_dir at a complete copy.")


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (gzipped or not) into an array, checking its header against its size."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"Cannot read IDX file {path}: {e.strerror}.") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"IDX file {path} is a damaged or truncated gzip archive ({e}). "
                            + _FIX_IDX) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"IDX file {path} has a bad magic number ({raw[:4].hex() or 'empty'}): "
                        "it is not an IDX file, or its header is damaged. " + _FIX_IDX)
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"IDX file {path} has a truncated header ({len(raw)} bytes). " + _FIX_IDX)
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "is truncated" if found < expected else "has trailing bytes"
        raise UserError(f"IDX file {path} {what}: its header promises shape {shape} "
                        f"({expected} bytes of data) but it holds {found}. " + _FIX_IDX)
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise UserError(f"The MNIST folder {folder} lacks {name} (or {name}.gz). Fix: put the four "
                    f"MNIST IDX files ({', '.join(MNIST_FILES.values())}) there, gzipped or not.")


def _check_split(images: np.ndarray, labels: np.ndarray, split: str, folder: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise UserError(f"MNIST {split} images in {folder} have shape {images.shape} and dtype "
                        f"{images.dtype}; expected (N, 28, 28) uint8. " + _FIX_IDX)
    if labels.ndim != 1 or len(labels) != len(images):
        raise UserError(f"MNIST {split} labels in {folder} have shape {labels.shape} but there "
                        f"are {len(images)} images; the counts must match. " + _FIX_IDX)
    if labels.size and labels.max() > 9:
        raise UserError(f"MNIST {split} labels in {folder} go up to {labels.max()}; digits are "
                        "0-9. " + _FIX_IDX)


def mnist_folder(data_dir: str) -> str:
    """The folder of the IDX files: `data_dir/mnist`, or `data_dir` itself if they are there."""
    if not os.path.isdir(data_dir):
        raise UserError(f"The data folder {data_dir} does not exist. Fix: pass --data_dir (or set "
                        f"{DATA_DIR_ENV}) to a folder holding mnist/ with the four MNIST IDX "
                        "files, e.g. ../shared/datasets.")
    nested = os.path.join(data_dir, "mnist")
    if os.path.isdir(nested):
        return nested
    if any(f.startswith(MNIST_FILES["train_images"]) for f in os.listdir(data_dir)):
        return data_dir
    raise UserError(f"The data folder {data_dir} has no mnist/ subfolder. Fix: put the four MNIST "
                    f"IDX files in {nested}, or point --data_dir at the folder that holds mnist/.")


def load_mnist_idx(data_dir: str) -> dict[str, np.ndarray]:
    """Reads MNIST from IDX files: uint8 images (N, 28, 28) and uint8 labels (N,) per split."""
    folder = mnist_folder(data_dir)
    arrays = {key: read_idx(_find(folder, name)) for key, name in MNIST_FILES.items()}
    for split in ("train", "test"):
        _check_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, folder)
    return arrays


def load_mnist_tfds() -> dict[str, np.ndarray]:
    """Reads MNIST through `tfds.data_source` (downloads it if needed; needs internet once).

    TFDS stores the examples in its own shuffled order, so the first-5,000 validation split is a
    different (equally random) set of images than with the IDX files.
    """
    try:
        import tensorflow_datasets as tfds

        sources = {split: tfds.data_source("mnist", split=split) for split in ("train", "test")}
        arrays = {}
        for split, source in sources.items():
            examples = [source[i] for i in range(len(source))]
            arrays[f"{split}_images"] = np.stack([e["image"][..., 0] for e in examples])
            arrays[f"{split}_labels"] = np.array([e["label"] for e in examples], np.uint8)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 (any download or import failure gets the same advice)
        raise UserError(
            f"No data folder was given and TFDS could not provide MNIST ({type(e).__name__}: "
            f"{str(e)[:300]}). Fix: pass --data_dir=DIR or set {DATA_DIR_ENV}=DIR, where DIR "
            "holds mnist/ with the four MNIST IDX files (e.g. ../shared/datasets).") from None
    for split in ("train", "test"):
        _check_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], split, "TFDS")
    return arrays


def resolve_data_dir(data_dir: str = "") -> str:
    """The data folder: the flag, else the environment variable, else "" (meaning TFDS)."""
    return data_dir or os.environ.get(DATA_DIR_ENV, "")


def check_mnist(data_dir: str = "") -> str:
    """The data folder resolved (`resolve_data_dir`; "" means TFDS) after reading MNIST from it,
    so that bad data fails before anything is written."""
    data_dir = resolve_data_dir(data_dir)
    load_mnist(data_dir)
    return data_dir


def load_mnist(data_dir: str = "") -> dict[str, np.ndarray]:
    """MNIST from `data_dir` (or the environment variable, or TFDS); read once per process."""
    return _load_mnist_cached(resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=2)
def _load_mnist_cached(data_dir: str) -> dict[str, np.ndarray]:
    arrays = load_mnist_idx(data_dir) if data_dir else load_mnist_tfds()
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


@dataclass(frozen=True)
class Splits:
    """uint8 images (N, 28, 28, 1) and labels for the train, validation and test splits."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def mnist_splits(data_dir: str = "", val_examples: int = 5000, train_examples: int = -1) -> Splits:
    """The reference split: the first `val_examples` of the training file for validation, the
    rest for training (the first `train_examples` of them if that is positive), and the test file.

    This is TF's `read_data_sets`, which the reference called: `validation = train[:5000]`,
    `train = train[5000:]`. (An earlier issue asked for the last 5,000, and jaxgen held those
    out until 2026-12-02; that was wrong.)"""
    arrays = load_mnist(data_dir)
    images, labels = arrays["train_images"][..., None], arrays["train_labels"]
    n_train = len(images) - val_examples
    if n_train <= 0:
        raise UserError(f"The training file has {len(images)} images, too few to hold out "
                        f"{val_examples} for validation. Fix: use the full MNIST files or lower "
                        "--config.val_examples.")
    if train_examples > 0:
        n_train = min(n_train, train_examples)
    train = slice(val_examples, val_examples + n_train)
    return Splits(images[train], labels[train], images[:val_examples], labels[:val_examples],
                  arrays["test_images"][..., None], arrays["test_labels"])


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1], as the reference scaled MNIST."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images: jax.Array) -> jax.Array:
    """float [-1, 1] -> uint8 [0, 255] (for storing samples)."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def epoch_permutation(data_key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    """The example order of one epoch, a function of (data key, epoch) alone."""
    return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Full batches per epoch; the remainder of the permutation is dropped, as the reference did."""
    return num_examples // batch_size
