"""The Stable Diffusion fine-tuning notebook runs top to bottom at its tiny scale (a tiny random
pipeline and generated shapes): it trains, shows the report and samples, and draws with the
saved pipeline through diffusers."""

from __future__ import annotations

import os

from test_notebooks_families import _cell, _images, _run_tiny, _text


def test_notebook_trains_reports_and_generates_with_diffusers(monkeypatch, tmp_path):
    # The tiny pipeline and generated shapes, not a local pipeline or image folder. Run in the
    # process of tests/trainers/test_sd_finetune.py, whose functions the tiny scale compiles.
    monkeypatch.delenv("JAXGEN_SD_PRETRAINED", raising=False)
    monkeypatch.delenv("JAXGEN_SD_DATA", raising=False)
    nb = _run_tiny("sd_finetune", monkeypatch, tmp_path)
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
