"""The study notebook runs top to bottom (at its tiny scale, on the real MNIST files) and shows the
report's figures and table."""

from __future__ import annotations

import os

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NOTEBOOK = os.path.join(NOTEBOOKS, "moment_stab_mnist.ipynb")
SHARED_DATA = os.path.join(REPO, "..", "shared", "datasets")


def _data_dir() -> str:
    path = os.environ.get("JAXGEN_DATA_DIR") or SHARED_DATA
    if not os.path.isdir(path):
        pytest.skip(f"MNIST data folder not found: neither $JAXGEN_DATA_DIR nor {SHARED_DATA} "
                    "exists (set JAXGEN_DATA_DIR to a folder holding mnist/)")
    return os.path.abspath(path)


def _outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_tiny_study(monkeypatch, tmp_path):
    data_dir = _data_dir()
    # The kernel inherits this process's environment.
    monkeypatch.setenv("JAXGEN_NOTEBOOK_SCALE", "tiny")
    monkeypatch.setenv("JAXGEN_DATA_DIR", data_dir)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the tiny workdir is a tempfile.mkdtemp()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails

    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # all_runs_batch_stats, all_runs_moving_avg, losses, and samples of the two tiny runs.
    assert len(images) >= 5, f"expected the report's figures inline, got {len(images)} images"
    markdown = "\n".join(o.data["text/markdown"] for o in outputs
                         if "text/markdown" in o.get("data", {}))
    assert "| run | epochs |" in markdown, "the report's table is not among the outputs"
    for run in ("lr0.001_moment0_seed0", "lr0.001_moment0.1_seed0"):
        assert f"| {run} | 2 |" in markdown, f"no row for {run} after 2 epochs in the table"
    workdirs = [d for d in os.listdir(tmp_path) if d.startswith("jaxgen_notebook_")]
    assert len(workdirs) == 1
    assert os.path.isfile(os.path.join(tmp_path, workdirs[0], "report.md"))
