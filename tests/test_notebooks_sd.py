"""The Stable Diffusion fine-tuning notebook runs top to bottom at its tiny scale (a tiny random
pipeline and generated shapes): it trains, shows the report and samples, and draws with the
saved pipeline through diffusers."""

from __future__ import annotations

import os

import nbclient
import nbformat
from test_notebooks_families import NOTEBOOKS, _cell, _images, _text

NOTEBOOK = os.path.join(NOTEBOOKS, "sd_finetune.ipynb")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_trains_reports_and_generates_with_diffusers(monkeypatch, tmp_path):
    # The kernel inherits this environment (and the session's XLA cache: the tiny scale
    # compiles the same functions as tests/trainers/test_sd_finetune.py).
    monkeypatch.setenv("JAXGEN_NOTEBOOK_SCALE", "tiny")
    monkeypatch.delenv("JAXGEN_SD_PRETRAINED", raising=False)
    monkeypatch.delenv("JAXGEN_SD_DATA", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails
    workdirs = [d for d in os.listdir(tmp_path) if d.startswith("jaxgen_notebook_")]
    assert len(workdirs) == 1
    run_dir = os.path.join(tmp_path, workdirs[0], "lr0.001_seed0")
    assert os.path.isfile(os.path.join(run_dir, "pipeline", "model_index.json"))
    report = _cell(nb, "report")
    assert "| lr0.001_seed0 | 4 | " in _text(report)
    assert "samples at step 4 for ['a red square', 'a blue circle']" in _text(report)
    assert _images(report) == 1
    generate = _cell(nb, "generate")
    assert "1 images of 16x16 for 'a green circle', 2 steps" in _text(generate)
    assert _images(generate) == 1
