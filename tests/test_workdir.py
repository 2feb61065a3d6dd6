import json
import os
import subprocess
import sys

import pytest

from jaxgen import workdir
from jaxgen.errors import UserError


def test_lock_is_held_refused_and_released(tmp_path):
    path = tmp_path / workdir.LOCK_FILE
    with workdir.hold(str(tmp_path)):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == os.uname().nodename
        with pytest.raises(UserError, match=f"in use by process {os.getpid()} on this host"):
            with workdir.hold(str(tmp_path)):
                pass
        assert path.exists()  # the refused attempt left the holder's lock alone
    assert not path.exists()


def test_a_dead_holder_does_not_keep_the_lock_but_another_host_does(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / workdir.LOCK_FILE
    path.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    with workdir.hold(str(tmp_path)):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "has ended; taking it over" in capsys.readouterr().out
    path.write_text(json.dumps({"host": "node-17", "pid": 1, "since": "yesterday"}))
    with pytest.raises(UserError, match=f"on host node-17.*delete {path}"):
        with workdir.hold(str(tmp_path)):
            pass
    path.write_text('{"host": "torn')  # a holder killed mid-write
    with workdir.hold(str(tmp_path)):
        pass
