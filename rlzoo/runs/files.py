"""Files of a run directory: atomic writes, JSONL logs, checkpoints that load with weights_only."""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from rlzoo.errors import CheckpointError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # (read once: mkstemp creates files 0600; a run's files follow the umask like any other)
TMP_SUFFIX = ".tmp"  # atomic writes' temporary files: .<name>.<random>.tmp beside their target


def atomic_write_bytes(path: Path, data: bytes, private: bool = False) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`: a crash
    leaves either the old file or the new one, never half of one (and at worst a temporary file
    that `remove_temporary_files` cleans). An OS error (a full disk, a read-only file system)
    names `path`. `private`: a file that records a run's config or command line (which may hold
    what its user would not show everyone) is not world-readable (0660 under the umask)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o660 if private else 0o666) & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """A checkpoint, written atomically and not world-readable (it records the run's config)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), private=True)


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def checkpoint_path(run_dir: Path) -> Path:
    """Where a run keeps its checkpoint (the last one; it is overwritten atomically)."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """A checkpoint of tensors and plain values, loaded with `weights_only=True` (no pickled code
    runs). A truncated or foreign file is a one-line `CheckpointError`; the file stays in place."""
    from rlzoo.runs.reading import UnreadableFile, open_regular

    path = Path(path)
    try:  # a FIFO or a device in its place would block or stream forever
        os.close(open_regular(path, "a checkpoint", limit=2**50))
    except UnreadableFile as exc:
        raise CheckpointError(f"{exc}; it was left in place") from None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {reason}); it was left in place: move it "
            f"away to start this run again from iteration 0, or choose another run_dir=...") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict; it was left in place")
    if "learners" not in state and "critic" in state:  # (written before learners: the critic was the only one)
        critic = state.pop("critic")
        state["learners"] = {"critic": critic} if critic else {}
    if isinstance(state.get("policy"), dict) and "eval" in state["policy"]:  # (the ema view's old name)
        state["policy"]["ema"] = state["policy"].pop("eval")
    return state


def parse_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    """(records, numbers of the lines that are not JSON objects) of a JSONL log, read with the
    bounds of rlzoo.runs.reading (a regular file, no line over 1 MiB, no file over 1 GiB)."""
    from rlzoo.runs.reading import iter_lines

    path = Path(path)
    if not path.exists():
        return [], []
    records, damaged = [], []
    for number, raw in iter_lines(path, "a run's log"):
        line = raw.decode(errors="replace")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            damaged.append(number)
    return records, damaged


def peek_checkpoint(path: Path) -> dict:
    """A checkpoint's plain values without reading its tensors (memory-mapped), to check whose it
    is before a resume touches anything; a CheckpointError when it cannot be read."""
    return load_checkpoint(path, mmap=True)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL log; a line that is not a JSON object is skipped with a warning
    naming the file and line (a line cut by a crash, or a damaged disk block)."""
    records, damaged = parse_jsonl(path)
    if damaged:
        print(f"[rlzoo] warning: {path}: line{'s' if len(damaged) > 1 else ''} "
              f"{', '.join(map(str, damaged[:5]))} not JSON, skipped", file=sys.stderr)
    return records


def truncate_jsonl(path: Path, max_iteration: int) -> Path | None:
    """Keep the records up to `max_iteration` (the checkpoint a resumed run restarts from). A log
    with a damaged line is first kept whole as <name>.damaged-<n> (returned), so resume never
    loses a record, readable or not."""
    path = Path(path)
    if not path.exists():
        return None
    records, damaged = parse_jsonl(path)
    kept = [r for r in records if r.get("iteration", -1) <= max_iteration]
    aside = None
    if damaged:
        aside = next(path.with_name(f"{path.name}.damaged-{n}") for n in range(1, 10**6)
                     if not path.with_name(f"{path.name}.damaged-{n}").exists())
        shutil.copyfile(path, aside)  # the original bytes, under a new name, before the log is rewritten
    if damaged or len(kept) != len(records):
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return aside
