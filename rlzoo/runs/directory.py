"""What a run directory may hold, and the housekeeping a run does in it before it starts.

A run directory holds what rlzoo writes (RUN_ENTRIES) and whatever the user adds beside it, which
rlzoo never touches. rlzoo-train refuses a non-empty folder that holds no run (it would mix its
files with the user's), a folder inside another run directory, and a run directory with a link
where rlzoo writes (a shared or downloaded run could otherwise point `samples/` at your files).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from rlzoo.errors import ConfigError
from rlzoo.runs.lock import LOCK_NAME

FAILED_STARTS = "failed_starts"
# Everything rlzoo (or Hydra, for its job log) writes at the top of a run directory.
RUN_ENTRIES = frozenset({LOCK_NAME, ".hydra", "config.yaml", "summary.json", "metrics.jsonl", "eval.jsonl",
                         "error.txt", "samples", "checkpoints", "lora", "evaluations", FAILED_STARTS, "wandb",
                         "train.log", "ranks"})
# The folders of a run directory that rlzoo writes into.
RUN_FOLDERS = ("", "checkpoints", "samples", "lora", "evaluations")
DAMAGED = re.compile(r"^(metrics|eval)\.jsonl\.damaged-\d+$")
# an atomic write's temporary file: .<name>.<8 random characters of mkstemp>.tmp
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# What a start that never reached its first checkpoint may have left (its record).
START_RECORD = ("summary.json", "metrics.jsonl", "eval.jsonl", "error.txt", "config.yaml", ".hydra", "samples",
                "evaluations", "lora")


def is_rlzoo_entry(name: str) -> bool:
    return name in RUN_ENTRIES or bool(DAMAGED.match(name)) or bool(TEMPORARY.match(name))


def check_run_dir_layout(run_dir: Path) -> None:
    """ConfigError unless `run_dir` can be a run directory: a folder (or nothing yet), not inside
    another run directory, empty or holding a run, and without links where rlzoo writes."""
    from rlzoo.runs.outputs import enclosing_run_dir

    run_dir = Path(run_dir)
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ConfigError(f"run_dir={run_dir}: {parent} is not a directory")
            break
    outer = enclosing_run_dir(run_dir.parent) if run_dir.parent != run_dir else None
    if outer is not None:
        raise ConfigError(f"run_dir={run_dir} is inside the run directory {outer}; choose a directory outside it")
    if not run_dir.is_dir():
        return
    entries = sorted(run_dir.iterdir())
    holds_run = any((run_dir / name).exists() for name in (LOCK_NAME, "summary.json", "checkpoints"))
    foreign = [e.name for e in entries if not is_rlzoo_entry(e.name)]
    if foreign and not holds_run:
        raise ConfigError(f"run_dir={run_dir} is not empty and holds no rlzoo run ({len(foreign)} entries, e.g. "
                          f"{foreign[0]!r}); choose an empty or new directory")
    for name in sorted(RUN_ENTRIES):
        link = run_dir / name
        if link.is_symlink():
            raise ConfigError(f"run directory {run_dir} holds a link {link} -> {os.readlink(link)}; rlzoo writes "
                              f"there, so it refuses links inside a run directory (copy the run with its files)")


def remove_temporary_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed atomic write left in the folders rlzoo writes (only
    names of the form .<name>.<8 random characters>.tmp, which rlzoo alone writes); returns them."""
    removed = []
    for folder in RUN_FOLDERS:
        path = Path(run_dir) / folder
        if path.is_dir() and not path.is_symlink():
            for entry in path.iterdir():
                if TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
                    entry.unlink()
                    removed.append(entry)
    return removed


def set_aside_failed_start(run_dir: Path) -> Path | None:
    """Before a run starts afresh (no checkpoint), move the record an earlier start left (its
    summary, logs, error, config, grids) into <run_dir>/failed_starts/<n>/, so the new run's logs
    begin empty and nothing is lost; returns that folder, or None when there was nothing."""
    run_dir = Path(run_dir)
    present = [name for name in START_RECORD if (run_dir / name).exists()]
    present += sorted(e.name for e in run_dir.iterdir() if DAMAGED.match(e.name)) if run_dir.is_dir() else []
    if not present:
        return None
    root = run_dir / FAILED_STARTS
    aside = next(root / str(n) for n in range(1, 10**6) if not (root / str(n)).exists())
    aside.mkdir(parents=True)
    for name in present:
        os.replace(run_dir / name, aside / name)
    print(f"[rlzoo] {run_dir} held the record of a start that never reached a checkpoint; it is kept in {aside}")
    return aside


def write_hydra_record(run_dir: Path, cfg) -> None:
    """.hydra/{config,hydra,overrides}.yaml as Hydra writes them, but only once the run directory
    is owned and checked (Hydra's own writing is off: `hydra.output_subdir: null`), so a refused
    command leaves the record of the run as it was."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlzoo.runs.files import atomic_write_bytes

    hydra = HydraConfig.get()
    folder = Path(run_dir) / ".hydra"
    atomic_write_bytes(folder / "config.yaml", OmegaConf.to_yaml(cfg).encode(), private=True)
    atomic_write_bytes(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})).encode(), private=True)
    atomic_write_bytes(folder / "overrides.yaml", OmegaConf.to_yaml(hydra.overrides.task).encode(), private=True)
