"""The StyleGAN notebook runs top to bottom at its tiny scale (a module of its own, so that the
parallel test workers can run it beside the conditional GAN's notebook)."""

from __future__ import annotations

from test_notebooks_families import _cell, _images, _run_tiny, _text


def test_stylegan_notebook_trains_restores_and_draws_truncation_and_mixing(monkeypatch,
                                                                          tmp_path):
    nb = _run_tiny("stylegan_mnist", monkeypatch, tmp_path)
    report = _cell(nb, "report")
    text = _text(report)
    assert "### Sample quality and collapse" in text
    assert "### Mode-collapse alerts" in text
    assert _images(report) == 2  # the eval curves and the samples of all runs
    assert "restored lr0.001_moment0_seed0 at step 40" in _text(_cell(nb, "restore"))
    truncation = _cell(nb, "truncation")
    assert _images(truncation) == 1
    # psi = 0 maps every z to w_avg: the same image for every z.
    spreads = dict(line.split(": spread over z ") for line in _text(truncation).splitlines()
                   if "spread over z" in line)
    assert list(spreads) == ["psi 1", "psi 0.7", "psi 0.5", "psi 0"]
    assert float(spreads["psi 0"]) == 0.0 and float(spreads["psi 1"]) > 0.0
    mixing = _cell(nb, "mixing")
    assert _images(mixing) == 1
    assert "mapping + synthesis against G: max |difference|" in _text(mixing)
    assert sum(_images(c) for c in nb.cells if c.cell_type == "code") == 4
