"""The DDPM notebook runs top to bottom at its tiny scale (on the real MNIST files): it trains,
shows its report, restores the final state, and draws both samplers and the bound's terms."""

from __future__ import annotations

from test_notebooks_families import _cell, _images, _run_tiny, _text


def test_ddpm_notebook_trains_restores_samples_and_bounds(monkeypatch, tmp_path):
    nb = _run_tiny("ddpm_mnist", monkeypatch, tmp_path)
    assert _images(_cell(nb, "config")) == 1  # the schedules
    report = _text(_cell(nb, "report"))
    assert "### Likelihood and sample quality" in report and "bits/dim" in report
    assert _images(_cell(nb, "report")) == 1  # the validation curves
    assert "restored schedcosine_lr0.002_seed0 at step 8" in _text(_cell(nb, "restore"))
    samplers = _text(_cell(nb, "samplers"))
    assert "ddpm: mean pixel" in samplers and "ddim: mean pixel" in samplers
    assert _images(_cell(nb, "samplers")) == 1
    terms = dict(line.split(":")[0].strip() and (line.split(":")[0].strip(),
                                                 float(line.split(":")[1].split()[0]))
                 for line in _text(_cell(nb, "bpd")).splitlines())
    assert terms["bpd"] > 0
    assert abs(terms["bpd"] - terms["prior"] - terms["decoder"] - terms["kl"]) < 0.01
