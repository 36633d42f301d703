"""Where measurements go: metrics.jsonl / eval.jsonl always, wandb on request."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast


class JsonlLogger:
    """metrics.jsonl (one line per iteration) and eval.jsonl (one line per evaluation)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def log(self, kind: str, record: dict) -> None:
        with open(self.run_dir / f"{kind}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_image(self, key: str, path: Path, record: dict) -> None:
        pass  # the grid is already a file in the run directory

    def finish(self) -> None:
        pass


class WandbLogger:
    """Mirrors the JSONL records to wandb (imported lazily; offline unless configured). The
    x-axis of every chart is `compute/nfe` (forward + backward model evaluations per sample),
    the unit budgets and reports use; sample grids are logged as images at each evaluation."""

    def __init__(self, run_dir: Path, project: str = "rlzoo", mode: str = "offline",
                 group: str | None = None, name: str | None = None, run_config: dict | None = None,
                 entity: str | None = None):
        import wandb

        self.run = wandb.init(project=project, entity=entity, mode=cast(Any, mode), group=group, name=name,
                              dir=str(run_dir), config=run_config, resume="allow",
                              id=wandb_id(run_dir), reinit="finish_previous")
        self.run.define_metric("compute/nfe")
        for kind in ("metrics", "eval", "samples"):
            self.run.define_metric(f"{kind}/*", step_metric="compute/nfe")

    def log(self, kind: str, record: dict) -> None:
        # (not `time`: wandb stamps every record with its own)
        values = {f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "time"}
        if "nfe_forward" in record:
            values["compute/nfe"] = record["nfe_forward"] + record["nfe_backward"]
        self.run.log(values)

    def log_image(self, key: str, path: Path, record: dict) -> None:
        import wandb

        nfe = record["nfe_forward"] + record["nfe_backward"]
        self.run.log({f"samples/{key}": wandb.Image(str(path), caption=f"iteration {record['iteration']}, nfe {nfe:,}"),
                      "compute/nfe": nfe})

    def finish(self) -> None:
        self.run.finish()


def wandb_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed run continues the same wandb run."""
    import hashlib

    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
