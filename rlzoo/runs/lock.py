"""One owner per run directory: an OS lock (flock) on <run_dir>/.rlzoo.lock.

The kernel releases the lock when its process ends, however it ends (`kill -9`, a crashed node,
a requeued job), so a stale lock cannot exist; the file itself may stay and means nothing on its
own (a copied run directory carries the file, not the lock). While the lock is held, the file
names its holder, so a second process can say who owns the run.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from rlzoo.errors import RunLocked

LOCK_NAME = ".rlzoo.lock"
_HELD: dict[Path, dict] = {}  # run directories this process holds (the lock is re-entrant within it)


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"process {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: "
            f"{holder.get('command')})")


def _try_lock(fd: int, exclusive: bool, attempts: int = 5) -> bool:
    """A non-blocking flock, tried a few times: a reader probing the lock (`is_held`) holds it
    for microseconds, which must not make a starting run think it is owned."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.05 * (attempt + 1))
    return False


def read_holder(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str | None = None):
    """Hold the run directory's lock for the body of the `with`, or raise `RunLocked` naming the
    process that holds it. Creates the directory if needed (and nothing else). Re-entrant: a
    process that holds the lock (rlzoo-train takes it before Hydra writes .hydra/) may enter again."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _HELD:
        yield _HELD[key]
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd, exclusive=True):
            raise RunLocked(f"run directory {run_dir} is in use by {_describe(read_holder(run_dir))}; "
                            f"wait for it to finish or stop it, or choose another run_dir=...")
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        _HELD[key] = holder
        try:
            yield holder
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run directory's lock (a run that says "running" in its
    summary but whose lock nobody holds was killed)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if _try_lock(fd, exclusive=False, attempts=1):
            return False
        return True
    finally:
        os.close(fd)
