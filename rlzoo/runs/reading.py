"""Bounded reads of the files rlzoo did not write in this process: a run directory's config,
summary, logs and lock, Hydra's record of it, an `init_from` parent, an export's config.json, a
prompt file, an output folder's manifest (README, Reliability).

Run directories are shared and downloaded, so each of these files is untrusted input. A crafted
or damaged one ends in one line naming it (`UnreadableFile`, bad input), never in a hang or an
out-of-memory error:
- only regular files are read: a FIFO would block the reader forever, a device (a link to
  /dev/zero) would stream forever; a file is opened without blocking and checked before a byte;
- every file has a size cap, every log line too;
- YAML is read without anchors and aliases (a few hundred bytes of nested aliases expand to
  billions of nodes; rlzoo never writes one) and with a cap on nesting and on nodes; JSON with a
  cap on nesting.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from rlzoo.errors import ConfigError

KiB, MiB = 2**10, 2**20
CONFIG_BYTES = 4 * MiB      # a run's config.yaml is ~10 KiB; a crafted one needs no more to hurt
JSON_BYTES = 16 * MiB       # summary.json, a lock's holder, config.json, a manifest
LOG_BYTES = 2**30           # metrics.jsonl: one ~1 KiB line per iteration
LINE_BYTES = 1 * MiB        # one line of a log or of a prompt file
MAX_DEPTH = 64              # nesting of YAML or JSON (rlzoo's own files nest 4 deep)
MAX_NODES = 200_000         # YAML nodes (a run's config has ~500)


class UnreadableFile(ConfigError):
    """A file that cannot be what it should be; the message names it and why."""


def _sized(size: int) -> str:
    return f"{size / MiB:.1f} MiB" if size >= MiB else f"{size / KiB:.1f} KiB" if size >= KiB else f"{size} bytes"


def open_regular(path: Path, what: str, limit: int) -> int:
    """A descriptor of `path` opened for reading, once it is known to be a regular file of at most
    `limit` bytes (O_NONBLOCK: opening a FIFO must not wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UnreadableFile(f"{path} ({what}) cannot be read: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if stat.S_ISCHR(info.st_mode)
                or stat.S_ISBLK(info.st_mode) else "a directory" if stat.S_ISDIR(info.st_mode) else "not a file")
        raise UnreadableFile(f"{path} ({what}) is {kind}, not a regular file; rlzoo reads only regular files")
    if info.st_size > limit:
        os.close(fd)
        raise UnreadableFile(f"{path} ({what}) is {_sized(info.st_size)}, more than the {_sized(limit)} such a "
                             f"file may hold; it was not written by rlzoo")
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a file that grows while it is read
    is refused too)."""
    with os.fdopen(open_regular(Path(path), what, limit), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"{path} ({what}) holds more than the {_sized(limit)} such a file may hold")
    return data


def read_text(path: Path, what: str, limit: int) -> str:
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{path} ({what}) is not UTF-8 text (byte {exc.start})") from None


def iter_lines(path: Path, what: str, limit: int = LOG_BYTES, line_limit: int = LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a regular file, read as a stream: no line over `line_limit`,
    no file over `limit`."""
    with os.fdopen(open_regular(Path(path), what, limit), "rb") as f:
        total = 0
        for number, line in enumerate(iter(lambda: f.readline(line_limit + 1), b""), 1):
            total += len(line)
            if len(line) > line_limit:
                raise UnreadableFile(f"{path}:{number} ({what}) is a line of more than {_sized(line_limit)}")
            if total > limit:
                raise UnreadableFile(f"{path} ({what}) holds more than the {_sized(limit)} such a file may hold")
            yield number, line


def _depth_at_most(value, limit: int) -> bool:
    """Whether a parsed JSON value nests at most `limit` levels (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return True


def load_json(path: Path, what: str, limit: int = JSON_BYTES):
    """A JSON file's value, read within `limit` bytes and MAX_DEPTH levels of nesting."""
    import json

    text = read_text(path, what, limit)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise UnreadableFile(f"{path} ({what}) is not JSON ({reason})") from None
    if not _depth_at_most(value, MAX_DEPTH):
        raise UnreadableFile(f"{path} ({what}) nests deeper than {MAX_DEPTH} levels; it was not written by rlzoo")
    return value


def _bounded_loader():
    """OmegaConf's YAML loader (its float and duplicate-key rules) without anchors or aliases, with
    at most MAX_DEPTH levels and MAX_NODES nodes."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    class BoundedLoader(get_yaml_loader()):
        depth = nodes = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise _Refused(f"uses a YAML anchor or alias (line {event.start_mark.line + 1})")
            self.depth, self.nodes = self.depth + 1, self.nodes + 1
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels (line {event.start_mark.line + 1})")
            if self.nodes > MAX_NODES:
                raise _Refused(f"holds more than {MAX_NODES:,} values")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


class _Refused(Exception):
    pass


def load_yaml(path: Path, what: str, limit: int = CONFIG_BYTES):
    """A YAML file's plain value (dicts, lists, scalars), parsed as OmegaConf parses it but bounded:
    no anchors or aliases, at most MAX_DEPTH levels and MAX_NODES values, `limit` bytes."""
    import yaml

    text = read_text(path, what, limit)
    try:
        return yaml.load(text, Loader=_bounded_loader())  # noqa: S506 (a SafeLoader, bounded)
    except _Refused as exc:
        raise UnreadableFile(f"{path} ({what}) {exc}; rlzoo never writes that") from None
    except (yaml.YAMLError, RecursionError) as exc:
        reason = " ".join(str(getattr(exc, "problem", None) or type(exc).__name__).split())
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise UnreadableFile(f"{path} ({what}) is not YAML ({reason}{f', line {line + 1}' if line is not None else ''})") from None


def load_config(path: Path, what: str = "a run's config"):
    """A YAML config file (a mapping) as a DictConfig, read with `load_yaml`'s bounds."""
    from omegaconf import OmegaConf

    data = load_yaml(path, what)
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path} ({what}) is not a config (it holds a {type(data).__name__})")
    try:
        return OmegaConf.create(data)
    except Exception as exc:  # a key OmegaConf refuses (a non-string key)
        raise UnreadableFile(f"{path} ({what}) is not a config ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:120]})") from None
