"""The study notebook runs top to bottom (at its tiny scale, on the real MNIST files) and shows the
report's figures and table."""

from __future__ import annotations

import os

from test_notebooks_families import NOTEBOOKS, _run_tiny, nbformat

NOTEBOOK = os.path.join(NOTEBOOKS, "moment_stab_mnist.ipynb")


def _outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_tiny_study(monkeypatch, tmp_path):
    nb = _run_tiny("moment_stab_mnist", monkeypatch, tmp_path)
    outputs = _outputs(nb)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # all_runs_batch_stats, all_runs_moving_avg, losses, and samples of the two tiny runs.
    assert len(images) >= 5, f"expected the report's figures inline, got {len(images)} images"
    markdown = "\n".join(o.data["text/markdown"] for o in outputs
                         if "text/markdown" in o.get("data", {}))
    assert "| run | epochs |" in markdown, "the report's table is not among the outputs"
    for run in ("lr0.001_moment0_seed0", "lr0.001_moment0.1_seed0"):
        assert f"| {run} | 2 |" in markdown, f"no row for {run} after 2 epochs in the table"
