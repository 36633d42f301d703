"""Files of a run directory: atomic writes, JSONL logs, checkpoints that load with weights_only."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message is one line and names the file."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`: a crash
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def checkpoint_path(run_dir: Path) -> Path:
    """Where a run keeps its checkpoint (the last one; it is overwritten atomically)."""
    return Path(run_dir) / "checkpoints" / "last.pt"


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint of tensors and plain values, loaded with `weights_only=True` (no pickled code
    runs). A truncated or foreign file is a one-line `CheckpointError`; the file stays in place."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {reason}); it was left in place: "
            f"move it away to restart the run from its last good state, or delete the run directory") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict; it was left in place")
    return state


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the log
    return records


def truncate_jsonl(path: Path, max_iteration: int) -> None:
    """Keep the records up to `max_iteration` (the checkpoint a resumed run restarts from)."""
    path = Path(path)
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get("iteration", -1) <= max_iteration]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
