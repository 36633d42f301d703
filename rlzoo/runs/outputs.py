"""Directories a command writes into at the user's request (`--out`): never replace a file rlzoo
did not write, and never write into a run directory (README, Reliability).

Each such directory gets a manifest, `.rlzoo-files.json`, holding the SHA-256 of every file rlzoo
wrote there. A file may be replaced when the manifest says rlzoo wrote it and it has not changed
since; anything else (a file of the user's, or one they edited) only with `--overwrite`, and even
then rlzoo replaces only the files it writes: nothing else in the directory is touched, and no
directory is ever removed.

Before a file is replaced its new SHA-256 goes into the manifest's `pending` record, which is
cleared once the whole set is written: a command killed half-way leaves a folder whose manifest
says it is incomplete (readers such as prompts=file refuse it) and whose files are all still
rlzoo's, so rerunning the command completes it without --overwrite.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterable

from rlzoo.errors import OutputRefused
from rlzoo.runs.files import atomic_write_bytes
from rlzoo.runs.lock import LOCK_NAME

MANIFEST = ".rlzoo-files.json"


def is_run_dir(path: Path) -> bool:
    """A directory a run owns: rlzoo-train locked it (it holds .rlzoo.lock) or it holds checkpoints.
    (A run's record copied elsewhere, as `rlzoo report --export` copies it, is not one.)"""
    path = Path(path)
    return (path / LOCK_NAME).is_file() or (path / "checkpoints").is_dir()


def enclosing_run_dir(path: Path) -> Path | None:
    """`path` itself or its nearest parent that is a run directory, or None."""
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if is_run_dir(candidate):
            return candidate
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OutputDir:
    """Where a command writes files named relative to `path`.

    Call `claim(names)` with every name the command will write before writing any of them, so
    a refusal comes before the first byte; then `write(name, data)` each file atomically, and
    `close()` to record them in the manifest (a crash before it leaves files the next run treats
    as the user's: refused without --overwrite, never lost)."""

    def __init__(self, path: Path, overwrite: bool = False, flag: str = "--overwrite"):
        self.path, self.overwrite, self.flag = Path(path).expanduser(), overwrite, flag
        check_path(self.path, directory=True)
        run = enclosing_run_dir(self.path)
        if run is not None:
            raise OutputRefused(f"output {self.path} is inside the run directory {run}, which only "
                                f"its run writes; choose a directory outside it")
        self.manifest, self.pending = read_manifest(self.path)
        self.claimed: set[str] = set()

    def _ours(self, name: str) -> bool:
        """rlzoo wrote `name` here (or was writing it when it was stopped) and nobody changed it since."""
        target = self.path / name
        return ((name in self.manifest or name in self.pending) and target.is_file()
                and sha256(target) in (self.manifest.get(name), self.pending.get(name)))

    def claim(self, names: Iterable[str]) -> None:
        names = list(names)
        if self.path.is_dir() and not self.overwrite:
            existing = [p for p in self.path.iterdir() if p.name != MANIFEST]
            if existing and not (self.manifest or self.pending):  # a directory rlzoo did not make
                raise OutputRefused(
                    f"output {self.path} is not empty and rlzoo did not write it "
                    f"({len(existing)} entries, e.g. {existing[0].name}); choose an empty or new directory, "
                    f"or pass {self.flag} to replace only the files this command writes")
        conflicts = []
        for name in names:
            target = self.path / name
            for folder in list(reversed(target.relative_to(self.path).parents))[1:]:
                inside = self.path / folder
                if inside.is_symlink() or is_run_dir(inside):
                    raise OutputRefused(f"{inside} is a {'link' if inside.is_symlink() else 'run directory'}; "
                                        f"rlzoo writes no output through it, even with {self.flag}")
            if target.is_dir() or target.is_symlink():
                raise OutputRefused(f"{target} is a {'link' if target.is_symlink() else 'directory'}; "
                                    f"it will not be replaced by a file")
            if target.exists() and not self.overwrite and not self._ours(name):
                conflicts.append(name)
        if conflicts:
            raise OutputRefused(
                f"{len(conflicts)} file(s) in {self.path} were not written by rlzoo or were changed "
                f"since ({', '.join(conflicts[:3])}{', ...' if len(conflicts) > 3 else ''}); pass {self.flag} to "
                f"replace them, or choose another directory")
        self.claimed.update(names)

    def write(self, name: str, data: bytes) -> Path:
        if name not in self.claimed:
            raise RuntimeError(f"{name} written to {self.path} without claim()")  # a bug, not bad input
        target = self.path / name
        self.pending[name] = hashlib.sha256(data).hexdigest()
        self._write_manifest()  # first: a kill between the two leaves a file the manifest knows
        atomic_write_bytes(target, data)
        return target

    def close(self) -> None:
        """Record the files written in the folder's manifest: the set is whole."""
        self.manifest.update(self.pending)
        self.pending = {}
        self._write_manifest()

    def _write_manifest(self) -> None:
        record = {"written_by": "rlzoo", "files": dict(sorted(self.manifest.items()))}
        if self.pending:
            record["pending"] = dict(sorted(self.pending.items()))
        atomic_write_bytes(self.path / MANIFEST, (json.dumps(record, indent=1) + "\n").encode())

    def write_text(self, name: str, text: str) -> Path:
        return self.write(name, text.encode())

    def save_figure(self, name: str, figure, **kwargs) -> Path:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", **kwargs)
        return self.write(name, buffer.getvalue())


def read_manifest(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(files, pending) of a folder's manifest: the SHA-256 of each file rlzoo wrote there, and of
    each it was replacing when it stopped (empty once the set was written whole). A manifest that
    cannot be read counts as none."""
    from rlzoo.runs.reading import UnreadableFile, load_json

    if not (Path(folder) / MANIFEST).exists():
        return {}, {}
    try:
        record = load_json(Path(folder) / MANIFEST, "rlzoo's manifest of the folder")
    except UnreadableFile:
        return {}, {}
    record = record if isinstance(record, dict) else {}
    files, pending = ({str(k): str(v) for k, v in part.items()} if isinstance(part, dict) else {}
                      for part in (record.get("files"), record.get("pending")))
    return files, pending


def check_path(path: Path, directory: bool) -> None:
    """An output path that can be what it is meant to be: no file where a folder must be (the
    path itself, for a directory, or any parent), no option taken for a path."""
    if str(path).startswith("-"):
        raise OutputRefused(f"output {str(path)!r} looks like an option, not a path")
    for parent in ([path] if directory else []) + list(path.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputRefused(f"output {path}: {parent} is {'a file' if parent.exists() else 'a broken link'}, "
                                    f"not a directory")
            break


def check_new_file(path: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """A single output file the user named: refused where it exists or is a link (without the
    flag) or lies inside a run directory."""
    path = Path(path).expanduser()
    check_path(path, directory=False)
    run = enclosing_run_dir(path.parent)
    if run is not None:
        raise OutputRefused(f"{path} is inside the run directory {run}, which only its run writes; "
                            f"choose a path outside it")
    if path.is_dir():
        raise OutputRefused(f"{path} is a directory; name a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputRefused(f"{path} exists; pass {flag} to replace it, or choose another path")
