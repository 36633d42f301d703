"""Write (or check) the resolved config of every recipe and every row on every task they run on:
tests/snapshots/resolved_configs.json. A refactor of conf/ that must not change what runs (a shared
block, an interpolation) is checked against it by tests/integration/test_configs_end_to_end.py; a change that should
change values is made by rerunning this script and reviewing the diff.

    python scripts/resolved_configs.py            # rewrite the snapshot
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parents[1] / "tests" / "snapshots" / "resolved_configs.json"
# Not part of what a recipe means: where it writes and how it shows progress.
IGNORED = ("run_dir", "sweep_name", "progress_bar", "threads", "name", "task.embedding_cache")


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list):
        return {prefix.rstrip("."): json.dumps(node, sort_keys=True)}
    return {prefix.rstrip("."): node}


def cases() -> dict[str, list[str]]:
    from rlzoo.config import available

    out = {}
    for task in ("toy2d", "shapes", "t2i"):
        extra = ["model=sd3_tiny"] if task == "t2i" else []
        out[f"task={task}"] = [f"task={task}", *extra]
        for experiment in available("experiment"):
            out[f"task={task} experiment={experiment}"] = [f"task={task}", f"experiment={experiment}", *extra]
    for row in available("row"):
        out[f"task=shapes +row={row}"] = ["task=shapes", f"+row={row}"]
    for reward in available("reward"):  # every reward on the task that takes them all
        out[f"task=t2i reward={reward}"] = ["task=t2i", "model=sd3_tiny", f"reward={reward}"]
    return out


def resolved() -> dict[str, dict]:
    from omegaconf import OmegaConf

    from rlzoo.config import compose_config

    result = {}
    for label, overrides in cases().items():
        flat = flatten(OmegaConf.to_container(compose_config(overrides), resolve=True))
        result[label] = {k: v for k, v in sorted(flat.items()) if not k.startswith(IGNORED)}
    return result


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(json.dumps(resolved(), indent=0, sort_keys=True) + "\n")
    print(f"written {SNAPSHOT}", file=sys.stderr)
