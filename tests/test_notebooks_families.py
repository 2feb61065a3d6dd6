"""The conditional GAN and StyleGAN notebooks run top to bottom (at their tiny scale, on the real
MNIST files): each trains, shows its report, restores the final state from the workdir's
checkpoint, and draws its figures."""

from __future__ import annotations

import base64
import os
import tempfile

import pytest

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


def run_notebook(path: str):
    """The notebook at `path` executed top to bottom, each code cell in turn, by IPython's
    interactive shell in this process (the shell a Jupyter kernel runs), with its printed text
    and displayed figures and markdown stored as the cell's outputs, in nbformat's shapes.

    In process rather than in a kernel, so that a notebook reuses what this test worker has
    compiled already: the tiny scales equal the trainer tests' setups, and the trainers cache
    their compiled functions by setup. A cell that raises fails the test with its error."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)
    settings = Config()
    settings.HistoryManager.enabled = False  # no history database written
    shell = InteractiveShell.instance(config=settings)
    shell.reset(new_session=True)  # nothing left from the notebook before
    try:
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            with capture_output(display=True) as captured:
                result = shell.run_cell(cell.source, store_history=False)
            cell.outputs = [nbformat.v4.new_output("stream", name=name, text=text)
                            for name, text in (("stdout", captured.stdout),
                                               ("stderr", captured.stderr)) if text]
            # Binary data (a PNG) base64-encoded, as a kernel sends it.
            cell.outputs += [nbformat.v4.new_output("display_data", data={
                mime: base64.b64encode(value).decode() if isinstance(value, bytes) else value
                for mime, value in out.data.items()}, metadata=out.metadata or {})
                for out in captured.outputs]
            if not result.success:
                raise AssertionError(f"cell {cell.get('id')!r} of {os.path.basename(path)} "
                                     f"failed:\n{captured.stderr}") from (
                    result.error_before_exec or result.error_in_exec)
    finally:
        shell.reset(new_session=True)  # its arrays and figures freed
    return nb


def _run_tiny(name: str, monkeypatch, tmp_path):
    """The notebook executed at its tiny scale (`run_notebook`), on the real MNIST files, in
    a fresh temporary workdir under `tmp_path`; returns it with its outputs."""
    monkeypatch.setenv("JAXGEN_NOTEBOOK_SCALE", "tiny")
    monkeypatch.setenv("JAXGEN_DATA_DIR", _data_dir())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the workdir is a mkdtemp()
    monkeypatch.chdir(NOTEBOOKS)  # where Jupyter starts a notebook's kernel
    nb = run_notebook(os.path.join(NOTEBOOKS, f"{name}.ipynb"))
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
