"""MNIST from its original IDX files, split as the reference study split it.

The data folder holds `mnist/` with the four IDX files, gzipped or not. It comes from `--data_dir`
or the `JAXGEN_DATA_DIR` environment variable; with neither, the four original files are
downloaded once (`download_mnist`) into `~/.cache/jaxgen/datasets/mnist` (or under
`JAXGEN_CACHE_DIR`), checked against their published sha256 sums, and read from there.

The whole data set lives on the device as uint8; batches are gathered there by index from a
permutation that depends only on (seed, epoch), so the data position needs no saving.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import urllib.request
import zlib
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import UserError

DATA_DIR_ENV = "JAXGEN_DATA_DIR"
CACHE_DIR_ENV = "JAXGEN_CACHE_DIR"
# Where the original files are served, with their sizes and sha256 sums (as TFDS registers them).
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_DOWNLOADS = {
    "train-images-idx3-ubyte.gz": (
        9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (
        28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (
        1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (
        4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
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


def cache_dir() -> str:
    """jaxgen's download cache: `JAXGEN_CACHE_DIR`, else ~/.cache/jaxgen."""
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "jaxgen")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _urlopen(url: str):  # the one place that reaches the network (tests replace it)
    return urllib.request.urlopen(url, timeout=60)


def download_mnist(root: str | None = None) -> str:
    """The data folder holding `mnist/` with the four original IDX files, downloaded into
    `root` (default: `cache_dir()/datasets`) where they are missing or fail their sha256 sum.
    Each file is written to a `.part` file, checked, then renamed, so an interrupted download
    leaves nothing that looks whole. Needs internet once."""
    root = root or os.path.join(cache_dir(), "datasets")
    folder = os.path.join(root, "mnist")
    for name, (size, sha) in MNIST_DOWNLOADS.items():
        path = os.path.join(folder, name)
        if os.path.exists(path) and _sha256(path) == sha:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
            print(f"downloading {MNIST_URL + name} to {folder}", flush=True)
            with _urlopen(MNIST_URL + name) as response, open(path + ".part", "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:  # urllib's URLError is an OSError
            _remove(path + ".part")
            raise UserError(
                f"No data folder was given and MNIST could not be downloaded from {MNIST_URL} "
                f"({type(e).__name__}: {str(e)[:200]}). Fix: pass --data_dir=DIR or set "
                f"{DATA_DIR_ENV}=DIR, where DIR holds mnist/ with the four MNIST IDX files "
                "(e.g. ../shared/datasets), or retry with internet.") from None
        got = _sha256(path + ".part")
        if got != sha:
            found = os.path.getsize(path + ".part")
            _remove(path + ".part")
            raise UserError(f"The download of {name} is damaged ({found} bytes, sha256 {got}; "
                            f"expected {size} bytes, sha256 {sha}); nothing was kept. Fix: "
                            "retry, or pass --data_dir=DIR with the four MNIST IDX files.")
        os.replace(path + ".part", path)
    return root


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def resolve_data_dir(data_dir: str = "") -> str:
    """The data folder: the flag, else the environment variable, else "" (meaning: download
    the original files into the cache, `download_mnist`)."""
    return data_dir or os.environ.get(DATA_DIR_ENV, "")


def check_mnist(data_dir: str = "") -> str:
    """The data folder resolved (`resolve_data_dir`, or the download cache when none is given)
    after reading MNIST from it, so that bad data fails before anything is written."""
    data_dir = resolve_data_dir(data_dir) or download_mnist()
    load_mnist(data_dir)
    return data_dir


def check_training_split(data_dir: str, val_examples: int, train_examples: int,
                         batch_size: int) -> None:
    """Refuses a split whose training part holds less than one batch (no step could run)."""
    n = len(mnist_splits(data_dir, val_examples, train_examples).train_images)
    if n < batch_size:
        raise UserError(f"The training split holds {n} images (--config.train_examples="
                        f"{train_examples}, --config.val_examples={val_examples} held out), less "
                        f"than one batch of --config.batch_size={batch_size}. Fix: raise "
                        "--config.train_examples (-1 uses all) or lower --config.batch_size.")


def load_mnist(data_dir: str = "") -> dict[str, np.ndarray]:
    """MNIST from `data_dir` (or the environment variable, or the download cache); read once
    per process."""
    return _load_mnist_cached(resolve_data_dir(data_dir) or download_mnist())


@functools.lru_cache(maxsize=2)
def _load_mnist_cached(data_dir: str) -> dict[str, np.ndarray]:
    arrays = load_mnist_idx(data_dir)
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
