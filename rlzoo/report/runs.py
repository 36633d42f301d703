"""The runs of a sweep as the report reads them: overrides, status, held-out curves, compute to a
threshold (linear interpolation; the Kaplan-Meier median where some seeds never reach it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rlzoo.config import ConfigError, override_dict
from rlzoo.runs import read_jsonl, read_summary
from rlzoo.runs.directory import FAILED_STARTS

# Overrides that never define a row: they change where or how a run is logged, not what it computes.
IGNORED_KEYS = {"seed", "sweep", "sweep_name", "threads", "progress_bar", "logger"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    status: str  # completed | failed | interrupted | running | incomplete (no summary)
    error: str | None = None
    stopped_by_time: bool = False  # its wall-clock guard ended it before its budget: not comparable
    headline: str | None = None  # what its held-out `reward` is (summary.json's eval_protocol.reward)
    final: float = math.nan
    best: float = math.nan
    kl: float = math.nan
    nfe: float = math.nan  # forward + backward model evaluations spent
    curve: list[tuple[float, float]] = field(default_factory=list)  # (nfe, held-out reward)
    evals: list[dict] = field(default_factory=list)  # every eval.jsonl record (metrics beyond the reward)

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")

    def compute_to(self, threshold: float) -> float:
        """Model evaluations at which the held-out reward first reaches `threshold`, linearly
        interpolated between the evaluation below it and the first one at or above it (nan if
        no evaluation reaches it)."""
        return crossing(self.curve, threshold)


def crossing(curve: list[tuple[float, float]], threshold: float) -> float:
    """First x where the piecewise-linear curve through (x, y) points reaches y = threshold."""
    for i, (x, y) in enumerate(curve):
        if y >= threshold:
            if i == 0:
                return x
            x0, y0 = curve[i - 1]
            return x0 + (threshold - y0) / (y - y0) * (x - x0)
    return math.nan


def kaplan_meier_median(times: list[float], reached: list[bool]) -> float:
    """Median of the time-to-event from right-censored samples (`reached[i]` False: only known to
    exceed `times[i]`), by the Kaplan-Meier estimator S(t) = prod over event times t_j <= t of
    (1 - d_j/n_j): the first event time where S drops to 0.5 or below; nan if it never does."""
    survival = 1.0
    for t in sorted({t for t, r in zip(times, reached) if r}):
        at_risk = sum(1 for u in times if u >= t)
        events = sum(1 for u, r in zip(times, reached) if r and u == t)
        survival *= 1 - events / at_risk
        if survival <= 0.5:
            return t
    return math.nan


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    from rlzoo.runs.reading import load_yaml

    overrides = load_yaml(path, "the run's overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{path} (the run's overrides) is not a list of key=value strings")
    return override_dict(overrides)


def load_run(run_dir: Path) -> Run:
    """A run's record as the report reads it, or a ConfigError naming the file that does not fit."""
    try:
        return _load_run(run_dir)
    except ConfigError:  # a file that cannot be read names itself
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"run {run_dir} has a record the report cannot read ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:120]}); its eval.jsonl, metrics.jsonl and summary.json "
                          f"must be rlzoo's") from None


def _load_run(run_dir: Path) -> Run:
    summary = read_summary(run_dir) or {}
    status = summary.get("status", "incomplete")
    run = Run(run_dir, _overrides(run_dir), status, summary.get("error"), bool(summary.get("stopped_by_time")),
              (summary.get("eval_protocol") or {}).get("reward"))
    evals = read_jsonl(run_dir / "eval.jsonl")
    run.curve = [(r["nfe_forward"] + r["nfe_backward"], r["reward"]) for r in evals]
    run.evals = evals
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if run.status == "completed" and evals:
        run.final = evals[-1]["reward"]
        run.best = max(r["reward"] for r in evals)
        run.nfe = run.curve[-1][0]
        tail = metrics[-max(1, len(metrics) // 10):]  # KL to the reference over the last 10%
        run.kl = sum(r["kl"] for r in tail) / len(tail) if tail and _has_kl(run_dir) else math.nan
    return run


def _has_kl(run_dir: Path) -> bool:
    """False when the run's config has no KL term (kl=none): its logged 0 is not a measurement."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return True
    from rlzoo.runs.reading import load_yaml

    config = load_yaml(path, "a run's config")
    kl = config.get("kl") if isinstance(config, dict) else None
    return not isinstance(kl, dict) or kl.get("name") != "none"


def _job_number(run_dir: Path) -> int:
    """Hydra's job number (launch order = the sweep's grid order), or -1."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.exists():
        return -1
    from rlzoo.runs.reading import load_yaml

    record = load_yaml(path, "Hydra's record of the run")
    for key in ("hydra", "job", "num"):
        record = record.get(key) if isinstance(record, dict) else None
    return record if isinstance(record, int) and not isinstance(record, bool) else -1


def find_runs(root: Path) -> list[Run]:
    """Every run directory under `root` (one holding .hydra/overrides.yaml or summary.json), in
    the sweep's launch order, so table rows follow the order of the grid."""
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    dirs |= {p.parent for p in root.rglob("summary.json")}
    dirs = sorted((d for d in dirs if d.name != "report" and FAILED_STARTS not in d.relative_to(root).parts),
                  key=lambda d: (_job_number(d), str(d)))
    return [load_run(d) for d in dirs]


def varying_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.overrides} - IGNORED_KEYS)
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
