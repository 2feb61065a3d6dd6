"""A workdir as the launcher claims it: writable, and held by one live process at a time.

Two launches on one workdir would each append every record to `metrics.jsonl`, save into the
same checkpoint folders and crash or hang on each other's files. `hold` takes a lock file that
names the holder's host and process id, created atomically; a holder that is gone (its process
has ended on this host) does not keep it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time

from jaxgen.errors import UserError

LOCK_FILE = ".jaxgen.lock"


def check_writable(workdir: str) -> None:
    """Refuses a workdir that is a file, or that cannot be created or written (read-only file
    system, no permission), with a clear error; leaves an existing workdir as it was."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"The workdir {workdir} is a file, not a folder. Fix: pass a --workdir "
                        "that is a folder (or a new path).")
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"Cannot write to the workdir {workdir} ({e.strerror or e}). Fix: pass "
                        "a --workdir on a file system you can write to.") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def hold(workdir: str):
    """Holds the workdir's lock for the duration of the block, or refuses (a `UserError`) when
    a live process holds it. A lock left by a process that has ended on this host is taken
    over, with a note; one held from another host is refused, since its holder cannot be
    checked from here (the message says how to release it)."""
    path = os.path.join(workdir, LOCK_FILE)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    while True:  # at most a stale lock removed before the lock is taken
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # written by a process that died mid-write, or not ours
                os.remove(path)
                continue
            if holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                print(f"The workdir's lock was left by process {holder.get('pid')}, which has "
                      "ended; taking it over.", flush=True)
                os.remove(path)
                continue
            where = ("on this host" if holder.get("host") == me["host"]
                     else f"on host {holder.get('host')}")
            raise UserError(
                f"The workdir {workdir} is in use by process {holder.get('pid')} {where} "
                f"(since {holder.get('since')}: {holder.get('command') or 'unknown command'}). "
                "Two launches on one workdir would write every record twice and fight over its "
                "checkpoints. Fix: wait for that run to finish (or stop it), or pass another "
                f"--workdir; if that process is gone, delete {path}.") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        holder = _read(path)
        if holder and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
            os.remove(path)
