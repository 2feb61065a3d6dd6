"""The conditional GAN and StyleGAN notebooks run top to bottom (at their tiny scale, on the real
MNIST files): each trains, shows its report, restores the final state from the workdir's
checkpoint, and draws its figures."""

from __future__ import annotations

import os

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
SHARED_DATA = os.path.join(REPO, "..", "shared", "datasets")
NAMES = ("cgan_mnist", "stylegan_mnist", "ddpm_mnist", "sd_finetune")  # stored without outputs


def _data_dir() -> str:
    path = os.environ.get("JAXGEN_DATA_DIR") or SHARED_DATA
    if not os.path.isdir(os.path.join(path, "mnist")):
        pytest.skip(f"MNIST data folder not found: neither $JAXGEN_DATA_DIR nor {SHARED_DATA} "
                    "holds mnist/ (set JAXGEN_DATA_DIR to a folder holding mnist/)")
    return os.path.abspath(path)


def _run_tiny(name: str, monkeypatch, tmp_path):
    """The notebook executed at its tiny scale; returns it with its outputs."""
    # The kernel inherits this process's environment.
    monkeypatch.setenv("JAXGEN_NOTEBOOK_SCALE", "tiny")
    monkeypatch.setenv("JAXGEN_DATA_DIR", _data_dir())
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the tiny workdir is a tempfile.mkdtemp()
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    workdirs = [d for d in os.listdir(tmp_path) if d.startswith("jaxgen_notebook_")]
    assert len(workdirs) == 1, workdirs
    assert os.path.isfile(os.path.join(tmp_path, workdirs[0], "report.md"))
    return nb


def _cell(nb, cell_id: str):
    return next(cell for cell in nb.cells if cell.get("id") == cell_id)


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def _text(cell) -> str:
    """The cell's printed text and markdown."""
    return "\n".join([o.text for o in cell.outputs if o.output_type == "stream"]
                     + [o.data["text/markdown"] for o in cell.outputs
                        if "text/markdown" in o.get("data", {})])


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_cgan_notebook_trains_restores_and_draws_digits_on_request(monkeypatch, tmp_path):
    nb = _run_tiny("cgan_mnist", monkeypatch, tmp_path)
    run = "onehot-w4-b0.5_lr0.0002_moment0_seed0"  # the tiny scale's one variant
    table = _text(_cell(nb, "report"))
    assert "### Conditional generation" in table
    assert "| setting | seeds | cond. accuracy | worst digit | per-digit FD (mean) |" in table
    assert f"| {run.removesuffix('_seed0')} | 1 |" in table, "no row for the tiny setting"
    # Restored from the checkpoint of the last epoch: 2 epochs of 400 images, batch 100.
    assert f"restored {run} at step 8" in _text(_cell(nb, "restore"))
    assert _images(_cell(nb, "digits")) == 1  # DIGITS x hands
    assert _images(_cell(nb, "all-digits")) == 1  # 10 digits x N
    assert "read as the digit asked:" in _text(_cell(nb, "all-digits"))
    assert sum(_images(c) for c in nb.cells if c.cell_type == "code") == 2
