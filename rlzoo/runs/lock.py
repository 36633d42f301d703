"""One owner per run directory: an OS lock (flock) on the directory itself.

The kernel releases the lock when its process ends, however it ends (`kill -9`, a crashed node,
a requeued job), so a stale lock cannot exist. The lock is on the directory, not on a file in it,
so no file a user might delete as stale can let a second owner in; a copied run directory is a
new directory and carries no lock. While the lock is held, <run_dir>/.rlzoo.lock names the
holder, so a second process can say who owns the run; the file stays afterwards and marks the
folder as a run directory. (Where a file system cannot lock a directory, NFS among them, the lock
falls back to that file.) A sweep's folder has its own lock, `.rlzoo-sweep.lock`, held by the
process that launches the sweep.
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

from rlzoo.errors import RunLocked, redact

LOCK_NAME = ".rlzoo.lock"
SWEEP_LOCK_NAME = ".rlzoo-sweep.lock"
# "<pid>:<run directory>", set by `rlzoo-train --nproc_per_node=N` (rlzoo.commands.ranks) for its ranks: that
# launcher holds the directory's lock, and its rank 0 (its child) writes the run for it
LOCK_HELD = "RLZOO_RUN_LOCK_HELD"
_HELD: dict[tuple[Path, str], dict] = {}  # what this process holds (the lock is re-entrant within it)


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


def _lockable(directory: Path, name: str) -> int:
    """A descriptor to flock for `directory`: the directory itself, or where the file system
    cannot lock a directory, the holder file `name` in it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe: can this file system lock a directory?
        fcntl.flock(fd, fcntl.LOCK_UN)
        return fd
    except BlockingIOError:
        return fd  # it can (someone holds it)
    except OSError:
        os.close(fd)
        return os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o640)


def _write_holder(fd: int, path: Path, data: bytes) -> None:
    """The holder's description: in place when the lock is on the file itself (replacing the
    file would leave the lock on an unlinked inode), else replaced atomically."""
    import stat

    if stat.S_ISDIR(os.fstat(fd).st_mode):
        from rlzoo.runs.files import atomic_write_bytes

        atomic_write_bytes(path, data, private=True)  # (it holds the command line)
    else:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def read_holder(run_dir: Path, name: str = LOCK_NAME) -> dict:
    """Who holds the lock, as its file says ({} where it says nothing readable: the file is
    untrusted, and a refusal must still be one line)."""
    from rlzoo.runs.reading import UnreadableFile, load_json

    try:
        holder = load_json(Path(run_dir) / name, "the run's lock", limit=64 * 1024)
    except UnreadableFile:
        return {}
    return {k: " ".join(str(v).split())[:200] for k, v in holder.items()} if isinstance(holder, dict) else {}


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str | None = None, name: str = LOCK_NAME, what: str = "run directory"):
    """Hold the directory's lock for the body of the `with`, or raise `RunLocked` naming the
    process that holds it. Creates the directory if needed, and the holder file `name` in it.
    Re-entrant: a process that holds the lock (rlzoo-train takes it before Hydra starts) may
    enter again."""
    run_dir = Path(run_dir)
    key = (run_dir.resolve(), name)
    if key in _HELD:
        yield _HELD[key]
        return
    if name == LOCK_NAME and launcher_holds_lock(run_dir):
        yield read_holder(run_dir)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _lockable(run_dir, name)
    try:
        if not _try_lock(fd, exclusive=True):
            raise RunLocked(f"{what} {run_dir} is in use by {_describe(read_holder(run_dir, name))}; "
                            f"wait for it to finish or stop it, or choose another directory")
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": redact(command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))}
        _write_holder(fd, run_dir / name, json.dumps(holder).encode())
        _HELD[key] = holder
        try:
            yield holder
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def launcher_holds_lock(run_dir: Path) -> bool:
    """Whether this process is a rank whose launcher (its parent) holds `run_dir`'s lock."""
    pid, _, where = os.environ.get(LOCK_HELD, "").partition(":")
    return pid == str(os.getppid()) and bool(where) and Path(where) == Path(run_dir).resolve()


def is_held(run_dir: Path, name: str = LOCK_NAME) -> bool:
    """Whether a live process holds the directory's lock (a run that says "running" in its
    summary but whose lock nobody holds was killed). Only a folder rlzoo has locked before (it
    holds the file `name`) is probed."""
    run_dir = Path(run_dir)
    if not (run_dir / name).is_file():
        return False
    try:
        fd = _lockable(run_dir, name)
    except OSError:
        return False
    try:
        return not _try_lock(fd, exclusive=False, attempts=1)
    finally:
        os.close(fd)
