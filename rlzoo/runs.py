"""Run directories: JSONL logs, atomic checkpoints, summary.json, optional wandb (README, Runs)."""
from __future__ import annotations

import json
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`."""
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
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


class JsonlLogger:
    """metrics.jsonl (one line per iteration) and eval.jsonl (one line per evaluation)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def log(self, kind: str, record: dict) -> None:
        with open(self.run_dir / f"{kind}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def finish(self) -> None:
        pass


class WandbLogger:
    """Mirrors the JSONL records to wandb (imported lazily; offline unless configured)."""

    def __init__(self, run_dir: Path, project: str = "rlzoo", mode: str = "offline",
                 group: str | None = None, name: str | None = None, run_config: dict | None = None,
                 entity: str | None = None):
        import wandb

        self.run = wandb.init(project=project, entity=entity, mode=mode, group=group, name=name,
                              dir=str(run_dir), config=run_config, resume="allow",
                              id=_wandb_id(run_dir), reinit="finish_previous")

    def log(self, kind: str, record: dict) -> None:
        step = record.get("iteration")
        self.run.log({f"{kind}/{k}": v for k, v in record.items()
                      if isinstance(v, (int, float)) and k != "iteration"}, step=step)

    def finish(self) -> None:
        self.run.finish()


def _wandb_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed run continues the same wandb run."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
