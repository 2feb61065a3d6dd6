"""Checkpoints: a failed background save is reported at once, with the intact step."""

import os
import resource
import signal
import time

import jax
import numpy as np
import pytest

from jaxgen import checkpoint
from jaxgen.errors import UserError


def test_a_failed_background_save_names_the_step_and_the_intact_checkpoint(tmp_path):
    """A save that hits a file-size limit (what a full disk does to the write: EFBIG instead of
    ENOSPC) fails in Orbax's background thread; `check_saved` turns it into one paragraph that
    names the run, the step, the folder and the intact checkpoint, and removes the partial
    folder. The checkpoint before it still restores."""
    folder = tmp_path / "run_a" / "checkpoints"
    manager = checkpoint.make_manager(str(folder))
    small = {"w": np.zeros(10, np.float32)}
    checkpoint.save(manager, 3, small)
    checkpoint.check_saved(manager, wait=True)  # a good save: nothing to say
    big = {"w": np.asarray(jax.random.normal(jax.random.PRNGKey(0), (400_000,)))}  # 1.6 MB
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, hard))
    try:
        checkpoint.save(manager, 6, big)
        deadline = time.time() + 60
        with pytest.raises(UserError) as error:  # as soon as the background write has failed
            while time.time() < deadline:
                checkpoint.check_saved(manager)
                time.sleep(0.02)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(error.value)
    assert message.startswith("file too large while saving step 6 of run_a to "), message
    assert "the checkpoint at step 3 is intact" in message and "Fix:" in message
    assert "\n" not in message
    assert sorted(os.listdir(folder)) == ["3"]  # the partial folder is gone
    again = checkpoint.make_manager(str(folder))
    restored = checkpoint.restore_latest(again, checkpoint.abstract_like(small))
    np.testing.assert_array_equal(restored["w"], small["w"])
