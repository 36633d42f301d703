"""Where a run stands: compute spent, evaluations recorded, budgets and when to stop."""
from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from rlzoo.types import Cost

PHASES = ("rollout", "reward", "critic", "train", "eval")


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


@dataclass
class Compute:
    """Compute spent so far: per-sample model evaluations and wall-clock by phase."""

    nfe_forward: int = 0
    nfe_backward: int = 0
    wall: dict = field(default_factory=lambda: {p: 0.0 for p in PHASES})

    @property
    def nfe(self) -> int:
        """Forward + backward model evaluations per sample: the unit of every budget and table."""
        return self.nfe_forward + self.nfe_backward

    def add(self, cost: Cost) -> None:
        """Count the model evaluations a component reports spending (rlzoo.types.Cost)."""
        self.nfe_forward += int(cost.nfe_forward)
        self.nfe_backward += int(cost.nfe_backward)

    @property
    def training_seconds(self) -> float:
        return sum(v for k, v in self.wall.items() if k != "eval")

    def as_dict(self, device: torch.device) -> dict:
        return {"nfe_forward": self.nfe_forward, "nfe_backward": self.nfe_backward,
                "wall_s": sum(self.wall.values()), "wall_split_s": dict(self.wall),
                "peak_mem_bytes": peak_memory_bytes(device)}


class Phase:
    """Context manager adding the elapsed wall-clock to one phase of `Compute`."""

    def __init__(self, compute: Compute, name: str):
        self.compute, self.name = compute, name

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        wall = self.compute.wall  # (a run resumed from an older checkpoint may lack a phase)
        wall[self.name] = wall.get(self.name, 0.0) + time.perf_counter() - self.start


def budget_spent(train, nfe: int, training_seconds: float) -> str | None:
    """Which training budget (train.max_minutes of wall-clock, train.max_nfe forward + backward
    model evaluations) is used up, if any."""
    if train.get("max_minutes") is not None and training_seconds >= float(train.max_minutes) * 60:
        return f"training wall-clock budget of {train.max_minutes} min"
    if train.get("max_nfe") is not None and nfe >= int(train.max_nfe):
        return f"model-evaluation budget of {int(train.max_nfe):,} (forward + backward)"
    return None


@dataclass
class Progress:
    """The bookkeeping of a run: iterations and optimizer steps done, compute spent, the held-out
    evaluations that summary.json reports, and the compute at which `report.threshold` was first
    reached. Plain values only, so it goes into a weights_only checkpoint as a dict."""

    iteration: int = 0
    optimizer_steps: int = 0  # the EMA schedules count these, as the peers' global_step
    compute: Compute = field(default_factory=Compute)
    base: dict | None = None
    final: dict | None = None  # the latest evaluation
    best: dict | None = None
    reached: dict | None = None
    last_eval_nfe: int = 0
    evaluations: int = 0
    started_from: dict | None = None  # a warm start's parent (init_from): path, kind, weights, iterations

    def record_eval(self, metrics: dict, threshold: float | None) -> dict:
        """Note one held-out evaluation; returns its eval.jsonl record."""
        c = self.compute
        record = {"iteration": self.iteration, **metrics, "nfe_forward": c.nfe_forward,
                  "nfe_backward": c.nfe_backward, "wall_s": c.training_seconds}
        if self.base is None:
            self.base = metrics
        self.final, self.last_eval_nfe = metrics, c.nfe
        self.evaluations += 1
        if threshold is not None and self.reached is None and metrics["reward"] >= threshold:
            self.reached = {k: record[k] for k in ("iteration", "nfe_forward", "nfe_backward", "wall_s")}
        if self.best is None or metrics["reward"] > self.best["reward"]:
            self.best = {**metrics, "iteration": self.iteration}
        return record

    def stop_reason(self, train) -> str | None:
        """Why training stops now (train.iterations or a budget), or None."""
        if self.iteration >= int(train.iterations):
            return f"train.iterations={int(train.iterations)} done"
        spent = budget_spent(train, self.compute.nfe, self.compute.training_seconds)
        return f"{spent} reached" if spent else None

    def stopped_by_time(self, train) -> bool:
        """Whether the wall-clock guard (train.max_minutes) ended training before its iterations
        or its model-evaluation budget: how far it got depends on the machine's speed, so its
        numbers are not the recipe's and not comparable with other runs'."""
        spent = budget_spent(train, self.compute.nfe, self.compute.training_seconds)
        return (spent is not None and spent.startswith("training wall-clock") and self.iteration < int(train.iterations)
                and (train.get("max_nfe") is None or self.compute.nfe < int(train.max_nfe)))

    def estimate(self, train, eval_cfg, since: tuple[int, float, int]) -> str:
        """How long the rest of the run will take at this machine's pace since `since` (iteration,
        training seconds, model evaluations when this process began training): the iterations
        left to whichever budget ends the run, and the evaluations still due at the time each
        took so far."""
        done = max(self.iteration - since[0], 1)
        seconds, nfe = (self.compute.training_seconds - since[1]) / done, (self.compute.nfe - since[2]) / done
        left = int(train.iterations) - self.iteration
        if train.get("max_nfe") is not None and nfe > 0:
            left = min(left, math.ceil((int(train.max_nfe) - self.compute.nfe) / nfe))
        if train.get("max_minutes") is not None and seconds > 0:
            left = min(left, math.ceil((float(train.max_minutes) * 60 - self.compute.training_seconds) / seconds))
        left = max(left, 0)
        every_nfe = eval_cfg.get("every_nfe")
        evals = 1 + (int(left * nfe // int(every_nfe)) if every_nfe else left // int(eval_cfg.every))  # (+ the last)
        eval_seconds = self.compute.wall.get("eval", 0.0) / max(self.evaluations, 1)
        total = (left * seconds + evals * eval_seconds) / 60
        return (f"{left:,} more iterations at {seconds:.2f} s each and {evals} evaluations at {eval_seconds:.0f} s "
                f"each: about {total:.0f} min on this machine")

    def describe_stop(self, train) -> str:
        """Why training stopped and where it got; a warning when the wall-clock guard stopped it."""
        c = self.compute
        line = (f"{self.stop_reason(train)} ({self.iteration} iterations, {c.nfe:,} model evaluations, "
                f"{c.training_seconds / 60:.1f} min of training)")
        if self.stopped_by_time(train):
            line += (f"\n[rlzoo] warning: the wall-clock guard train.max_minutes={train.max_minutes} stopped the run "
                     f"before its budget: how far it got depends on this machine's speed, so its numbers are not "
                     f"comparable (summary.json: stopped_by_time)")
        return line

    def eval_due(self, eval_cfg) -> bool:
        """Every eval.every iterations, or, with eval.every_nfe, each time the compute spent
        crosses a multiple of it: rows that spend different compute per iteration are then
        measured at the same compute points."""
        every_nfe = eval_cfg.get("every_nfe")
        if every_nfe:
            return self.compute.nfe // int(every_nfe) > self.last_eval_nfe // int(every_nfe)
        return self.iteration % int(eval_cfg.every) == 0

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "Progress":
        return cls(**{**state, "compute": Compute(**state["compute"])})


def is_finished(summary: dict, train) -> bool:
    """Whether a run's summary already satisfies this config's stopping rule (iterations or a
    budget), so rerunning it would add nothing; a raised budget or iteration count resumes it."""
    if summary.get("status") != "completed":
        return False
    c = summary["compute"]
    compute = Compute(c["nfe_forward"], c["nfe_backward"], c["wall_split_s"])
    return (summary["iterations"] >= int(train.iterations)
            or budget_spent(train, compute.nfe, compute.training_seconds) is not None)


class ProgressBar:
    """tqdm over the budget that decides when the run stops: model evaluations (train.max_nfe),
    else training minutes (train.max_minutes), else iterations; so total and ETA are honest."""

    def __init__(self, train, progress: Progress, enabled: bool, writes: bool = True):
        """`enabled`: the bar is drawn; `writes`: its lines are printed (rank 0's console)."""
        from tqdm import tqdm

        self.progress, self.writes = progress, writes
        if train.get("max_nfe") is not None:
            self.unit, total = "model evaluations", int(train.max_nfe)
            self._done = lambda: progress.compute.nfe
        elif train.get("max_minutes") is not None:
            self.unit, total = "training s", round(float(train.max_minutes) * 60)
            self._done = lambda: round(progress.compute.training_seconds)
        else:
            self.unit, total = "iterations", int(train.iterations)
            self._done = lambda: progress.iteration
        # (on stdout: under `rlzoo-train --nproc_per_node` only rank 0's stdout reaches the console)
        self.bar = tqdm(total=total, initial=self._done(), desc=f"rl ({self.unit})", unit="", file=sys.stdout,
                        unit_scale=self.unit == "model evaluations", dynamic_ncols=True, disable=not enabled)

    def update(self, **postfix) -> None:
        self.bar.update(min(self._done(), self.bar.total) - self.bar.n)
        if self.unit != "iterations":
            postfix = {"it": self.progress.iteration, **postfix}
        self.bar.set_postfix(**postfix)

    def write(self, line: str) -> None:
        if self.writes:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
