"""The launcher's error paths: a clear message, exit status 2, no traceback, no damage."""

import gzip
import os
import shutil
import subprocess
import sys

from conftest import LAUNCHED, REPO, launch, make_mnist_dir, tiny_flags

from jaxgen import sharding

RUN = os.path.join(REPO, "experiments", "run.py")


def _run(*args, env=None):
    """experiments/run.py in a fresh process (for what needs one: the device count is fixed
    when JAX starts)."""
    result = subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **(env or {})})
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _main(capsys, *args):
    """The error paths end before anything compiles, so a fresh process would only add JAX's
    start-up: `conftest.launch`, in this process."""
    return launch(capsys, *args)


def _fails(result, *phrases):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ")
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr)


def _snapshot(folder):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(folder) for f in files}


def test_unknown_experiment_and_flags(tmp_path, capsys):
    _fails(_main(capsys, "--exp=nope", f"--workdir={tmp_path}/w"), "Unknown experiment 'nope'",
           "moment_stab_mnist")
    _fails(_main(capsys, "--exp=moment_stab_mnist", "--wrkdir=x"), "Unknown flag --wrkdir")
    _fails(_main(capsys, "--exp=moment_stab_mnist", "--config.epochz=1"), "--config.epochs")
    _fails(_main(capsys, "--exp=moment_stab_mnist", "--config.batch_size=1e2"), "wrong type")
    _fails(_main(capsys, "--exp=moment_stab_mnist", f"--workdir={tmp_path}/w",
                 "--config.d_optimizer.name=adamw"), "--config.d_optimizer.weight_decay=0.0")
    assert not (tmp_path / "w").exists()
    helped = _main(capsys, "--help")
    assert helped.returncode == 0 and "moment_stab_mnist" in helped.stdout
    _fails(_run("--exp=nope"), "Unknown experiment 'nope'")  # through the real entry point


def test_bad_data_folders(tmp_path, capsys, monkeypatch):
    _fails(_main(capsys, "--exp=moment_stab_mnist", f"--workdir={tmp_path}/w",
                 f"--data_dir={tmp_path}/missing"), "does not exist", "--data_dir")
    _fails(_main(capsys, "--exp=moment_stab_mnist", f"--workdir={tmp_path}/w",
                 f"--data_dir={tmp_path}"), "no mnist/ subfolder")
    root = make_mnist_dir(str(tmp_path / "data"), n_train=300, n_test=20)
    images = os.path.join(root, "mnist", "train-images-idx3-ubyte.gz")
    with gzip.open(images) as f:
        raw = f.read()
    with gzip.open(images, "wb") as f:
        f.write(raw[:-100])
    _fails(_main(capsys, *tiny_flags(root), f"--workdir={tmp_path}/w"), "is truncated", "Fix:")
    with gzip.open(images, "wb") as f:
        f.write(b"\x08\x03" + raw[2:])
    _fails(_main(capsys, *tiny_flags(root), f"--workdir={tmp_path}/w"), "bad magic number")
    assert not (tmp_path / "w").exists()
    monkeypatch.setenv("JAXGEN_DATA_DIR", str(tmp_path / "nowhere"))
    _fails(_main(capsys, "--exp=moment_stab_mnist", f"--workdir={tmp_path}/w"), "nowhere")


def test_a_mesh_that_fits_the_batch_is_found():
    """The study's batch of 100 and its 18 runs on 8 devices: 2 sweep rows of 4 devices."""
    assert sharding.sweep_rows_for(100, 8, 18) == 2
    assert sharding.sweep_rows_for(10, 8, 4) == 4 and sharding.sweep_rows_for(10, 8, 2) is None
    assert sharding.sweep_rows_for(100, 6, 18) == 3  # 2 devices a row: 50 images each


def test_workdir_of_another_experiment_is_left_alone(tmp_path, synthetic_data_dir,
                                                    launched_workdir, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(launched_workdir, workdir)
    before = _snapshot(workdir)
    _fails(_main(capsys, *tiny_flags(synthetic_data_dir, **LAUNCHED, **{"model.g_hidden": "32"}),
                 f"--workdir={workdir}"), "different moment_stab_mnist setup", "g_hidden")
    assert _snapshot(workdir) == before


def test_other_experiment_in_workdir(tmp_path, synthetic_data_dir, capsys):
    exp = "moment_stab_mnist_quick"
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"exp": "moment_stab_mnist"}')
    _fails(_main(capsys, f"--exp={exp}", f"--data_dir={synthetic_data_dir}",
                 f"--workdir={workdir}"), "holds the experiment 'moment_stab_mnist'",
           f"not '{exp}'")
    assert (workdir / "config.json").read_text() == '{"exp": "moment_stab_mnist"}'


def test_bad_values_end_in_one_error_and_write_nothing(tmp_path, synthetic_data_dir, capsys):
    workdir = tmp_path / "w"
    for override, phrase in (("batch_size=0", "--config.batch_size=0 cannot train"),
                             ("batch_size=-5", "--config.batch_size=-5 cannot train"),
                             ("epochs=0", "--config.epochs=0 cannot train"),
                             ("learning_rates=(-0.001,)", "must be finite and positive"),
                             ("moment_weights=(1e999,)", "must be finite and at least 0"),
                             ("train_examples=5", "holds 5 images")):
        key, value = override.split("=")
        _fails(_main(capsys, *tiny_flags(synthetic_data_dir, **{key: value}),
                     f"--workdir={workdir}"), phrase, "Fix:")
        assert not workdir.exists(), override


def test_a_workdir_that_is_a_file_or_cannot_be_written(tmp_path, synthetic_data_dir, capsys):
    (tmp_path / "file").write_text("not a folder")
    _fails(_main(capsys, *tiny_flags(synthetic_data_dir), f"--workdir={tmp_path}/file"),
           "is a file, not a folder")
    _fails(_main(capsys, *tiny_flags(synthetic_data_dir), f"--workdir={tmp_path}/file/w"),
           "Cannot write to the workdir", "Fix:")
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_workdir_in_use_by_a_live_process_is_refused(tmp_path, synthetic_data_dir,
                                                      launched_workdir, capsys):
    workdir = tmp_path / "w"
    shutil.copytree(launched_workdir, workdir)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = workdir / ".jaxgen.lock"
        lock.write_text(f'{{"host": "{os.uname().nodename}", "pid": {holder.pid}, '
                        '"since": "2026-12-02 10:00:00", "command": "run.py"}')
        before = _snapshot(workdir)
        _fails(_main(capsys, *tiny_flags(synthetic_data_dir, **LAUNCHED), f"--workdir={workdir}"),
               f"in use by process {holder.pid} on this host", "Fix:")
        assert _snapshot(workdir) == before
    finally:
        holder.kill()
        holder.wait()
