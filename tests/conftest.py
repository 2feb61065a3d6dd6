"""Shared fixtures: IDX writing, a small synthetic MNIST folder, and a tiny study config."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from jaxgen import config as config_lib

# The tests compile far more than they compute (tiny shapes, few steps), so they trade run time
# for compile time: XLA's backend optimizations off, its legacy elemental emitters instead of the
# fusion emitters, and LLVM's expensive passes off. The tiny StyleGAN's train step then compiles
# in 10.4 s instead of 20.5 s with the first alone (and its run, with its initialization and
# sampling, takes 24 s instead of 44 s; measured side by side on the 2-core CI machine). Set
# before JAX starts its backend; subprocesses and notebook kernels inherit it.
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
                "--xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS"), FAST_COMPILE)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO, "experiments", "configs")
SHARED_MNIST = os.path.join(REPO, "..", "shared", "datasets")

# Overrides that shrink the study to seconds: a tiny DCGAN on 200 synthetic images (the 300 of
# `make_mnist_dir` less its 100 validation images; 200 are the study notebook's tiny scale too).
TINY = {"model.g_hidden": "16", "model.g_base_channels": "8", "model.g_mid_channels": "4",
        "model.d_channels": "(4,8)", "batch_size": "10", "epochs": "2", "train_examples": "200",
        "val_examples": "100", "eval_examples": "100", "eval_samples": "100",
        "eval_reference": "100", "learning_rates": "(0.001,)",
        "moment_weights": "(0.1,)", "seeds": "(0,)", "log_every_steps": "5",
        "num_fixed_samples": "10",
        "tensorboard": "False"}


# The test worker units, slowest first (measured: a minute or two each on 2 cores). pytest-xdist
# hands each unit (an `xdist_group`: `--dist loadgroup --no-loadscope-reorder` in pyproject.toml)
# to one worker, in this order, so the workers finish together instead of one waiting while the
# other runs a long unit last. A notebook shares a unit with the trainer tests whose tiny setup
# its tiny scale equals, so that it runs in the same process after them and reuses their compiled
# functions (tests/test_notebooks_families.py: `run_notebook`). Every other module is a unit of
# its own, after these.
UNITS = (("trainers/test_gan.py", "test_notebooks.py"),  # the tiny DCGAN study (TINY)
         ("trainers/test_ddpm_trainer.py", "test_notebooks_ddpm.py"),
         ("trainers/test_gan_families.py", "test_notebooks_stylegan.py"),  # the tiny StyleGAN
         ("trainers/test_sd_finetune.py", "test_notebooks_sd.py",
          "test_sharding_diffusion.py"),  # the tiny SD pipeline (`tiny_sd`)
         ("test_distributed.py",), ("test_sharding_diffusion.py",), ("test_sharding.py",),
         ("models/test_stylegan.py",), ("test_notebooks_families.py",), ("test_report.py",),
         ("test_cli.py",), ("trainers/test_gan_stability.py",))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    unit_of = {module: (i, j) for i, unit in enumerate(UNITS) for j, module in enumerate(unit)}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    module_of = {item: os.path.relpath(str(item.path), tests_dir) for item in items}
    for item, module in module_of.items():
        item.add_marker(pytest.mark.xdist_group(
            UNITS[unit_of[module][0]][0] if module in unit_of else module))
    items.sort(key=lambda item: unit_of.get(module_of[item], (len(UNITS), 0)))


def write_idx(path: str, array: np.ndarray, compress: bool = True) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if compress else raw)


def make_mnist_dir(root: str, n_train: int = 300, n_test: int = 100, seed: int = 0) -> str:
    """A data folder `root` with `mnist/` holding small random IDX files (digit-like blobs)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "mnist")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), np.uint8)
        for i in range(n):  # a bright bar at a random place, so batches have structure
            r, c = rng.integers(4, 20, 2)
            images[i, r:r + 6, c:c + 3] = rng.integers(128, 256)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels)
    return root


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the session, shared by both test workers and by the
    launcher's subprocesses and the notebooks' kernels, so that a step (the tiny StyleGAN's takes
    20 s to compile on CPU) compiles once per program, not once per process. The tests of one
    family use the same tiny setup for that reason."""
    import jax

    base = tmp_path_factory.getbasetemp()
    # Under pytest-xdist each worker has its own folder in the session's one.
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = os.path.join(str(root), "xla_cache")
    os.makedirs(path, exist_ok=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    jax.config.update("jax_compilation_cache_dir", path)
    yield path


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    return make_mnist_dir(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> dict[str, str]:
    """A tiny random Stable Diffusion pipeline (16 px) and a dozen generated shapes, shared by
    the SD unit's modules, so that their runs share compiled functions (`sd_finetune.build`
    caches them per pipeline folder and setup)."""
    from jaxgen import image_folder, sd

    root = tmp_path_factory.mktemp("sd")
    return {"pretrained": sd.make_tiny_pipeline(str(root / "tiny_sd"), resolution=16),
            "data_dir": image_folder.write_shapes_folder(str(root / "shapes"), n=12, size=20)}


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    path = os.environ.get("JAXGEN_DATA_DIR") or SHARED_MNIST
    if not os.path.isdir(os.path.join(path, "mnist")):
        pytest.skip(f"real MNIST not found at {path} (set JAXGEN_DATA_DIR)")
    return path


def tiny_config(data_dir: str, **overrides: str):
    config = config_lib.load_config("moment_stab_mnist", CONFIGS_DIR)
    config_lib.apply_overrides(config, {**TINY, **overrides})
    config.data_dir = data_dir
    return config


def tiny_flags(data_dir: str, **overrides: str) -> list[str]:
    """The same tiny study as command-line flags of experiments/run.py."""
    return ["--exp=moment_stab_mnist", f"--data_dir={data_dir}"] + [
        f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]


def launch(capsys, *args: str):
    """What experiments/run.py does (`cli.guarded(run_main)`), in this process, so that it
    reuses the compiled steps of the tests before it: a `subprocess.CompletedProcess` with the
    exit status and the output captured by `capsys` (none without it, as in a session
    fixture). A traceback escapes as an exception."""
    import subprocess

    from jaxgen import cli

    if capsys:
        capsys.readouterr()
    try:
        cli.guarded(lambda: cli.run_main(list(args), CONFIGS_DIR))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr() if capsys else None
    return subprocess.CompletedProcess(args, code, out and out.out, out and out.err)


# The launcher's tiny one-epoch run, shared by the tests that need a trained workdir from it.
LAUNCHED = {"epochs": "1", "eval_samples": "0"}


@pytest.fixture(scope="session")
def launched_workdir(synthetic_data_dir, tmp_path_factory) -> str:
    """A workdir trained by `launch` with `tiny_flags(**LAUNCHED)`; copy it before changing
    anything in it."""
    workdir = str(tmp_path_factory.mktemp("launched") / "w")
    result = launch(None, *tiny_flags(synthetic_data_dir, **LAUNCHED), f"--workdir={workdir}")
    assert result.returncode == 0, f"the launch exited with status {result.returncode}"
    return workdir
