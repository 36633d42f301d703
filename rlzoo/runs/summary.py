"""summary.json: the one file tools read from a run (README, Runs), and its printout."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from rlzoo.runs.files import atomic_write_json
from rlzoo.runs.progress import Progress


def write_summary(run_dir: Path, status: str, progress: Progress | None = None, *,
                  error: str | None = None, threshold: float | None = None,
                  eval_protocol: dict | None = None, device: torch.device = torch.device("cpu"),
                  stopped_by_time: bool = False) -> dict:
    """Write summary.json with its fixed shape, for a running, completed, failed or interrupted
    run; a run that failed before training started has an empty `Progress`. `stopped_by_time`:
    the wall-clock guard (train.max_minutes) ended it before its budget, so it is not comparable."""
    progress = progress or Progress()
    summary = {
        "status": status, "iterations": progress.iteration, "error": error,
        "base": progress.base, "final": progress.final, "best": progress.best,
        "compute": progress.compute.as_dict(device),
        "threshold": threshold, "threshold_reached": progress.reached,
        "eval_protocol": eval_protocol, "run_dir": str(run_dir), "init_from": progress.started_from,
        "stopped_by_time": stopped_by_time,
    }
    atomic_write_json(summary, Path(run_dir) / "summary.json")
    return summary


STATUSES = ("running", "completed", "failed", "interrupted")


def read_summary(run_dir: Path) -> dict | None:
    """A run's summary.json, or None when it has none or it is unreadable. A summary that says
    "running" while no process holds the run's lock belongs to a process that was killed (kill -9,
    a lost node): it is returned as "interrupted", so no reader believes a dead run is alive."""
    from rlzoo.runs.lock import is_held
    from rlzoo.runs.reading import UnreadableFile, load_json

    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = load_json(path, "the run's summary")
    except UnreadableFile:  # (a report lists the run as incomplete; a resume goes by its checkpoint)
        return None
    if not isinstance(summary, dict):
        return None
    if summary.get("status") == "running" and not is_held(run_dir):
        summary = {**summary, "status": "interrupted",
                   "error": summary.get("error") or "the process ended without writing its summary (killed?)"}
    return summary


def print_report(summary: dict) -> None:
    """The run's end table (its first evaluation, last and best), what its `reward` is, and where
    its sample grids are; a warm-started run's first column is the weights it started from."""
    base, final, best = summary["base"], summary["final"], summary["best"]
    keys = [k for k in base if isinstance(base[k], (int, float))]
    start = "start" if summary.get("init_from") else "base"
    print(f"\n{'metric':<28}{start:>9}{'final':>9}{'best':>9}")
    for k in keys:
        print(f"{k:<28}{base[k]:>9.3f}{final[k]:>9.3f}{best.get(k, float('nan')):>9.3f}")
    headline = (summary.get("eval_protocol") or {}).get("reward")
    if headline:
        print(f"(held-out; reward is {headline}" + (", verifier the task's own)" if "verifier" in base else ")"))
    if summary.get("init_from"):
        print(f"(start: the weights it started from, init_from={summary['init_from'].get('path')})")
    c = summary["compute"]
    print(f"\nNFE forward {c['nfe_forward']:,}  backward {c['nfe_backward']:,}  "
          f"wall {c['wall_s']:.1f}s  peak memory {c['peak_mem_bytes'] / 2**20:.0f} MiB")
    if summary.get("stopped_by_time"):
        print("stopped by its wall-clock guard (train.max_minutes) before its budget: not comparable with other runs")
    print(f"run directory: {summary['run_dir']}")
    print(f"next: rlzoo evaluate run_dir={summary['run_dir']}   rlzoo export run_dir={summary['run_dir']} --out DIR")
    samples = Path(summary["run_dir"]) / "samples"
    grids = sorted(samples.glob("iter*_nfe*.png"))
    if grids:
        first = "the weights it started from" if summary.get("init_from") else "base model"
        print(f"samples: {samples / 'before.png'} ({first}), {samples / 'after.png'} (final), and a grid per "
              f"evaluation: {grids[0].name} ... {grids[-1].name} ({len(grids)})")


def format_metrics(metrics: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))


def iteration_record(progress: Progress, rewards: dict, advantage: torch.Tensor, updates: list[dict],
                     optimizer, device: torch.device) -> dict:
    """The metrics.jsonl line of one iteration: rewards, advantages, update statistics, the
    learning rate, the compute spent so far (`wall_split_s`: seconds by phase) and `time`, when it
    ended (Unix seconds: the gaps between records are what an iteration costs as the run goes, its
    files and evaluations included)."""
    return {"iteration": progress.iteration,
            **{f"reward/{k}": float(v.float().mean()) for k, v in rewards.items()},
            "reward_std": float(rewards["reward"].float().std()),
            "advantage_abs_mean": float(advantage.abs().mean()), **merge_update_stats(updates),
            "lr": optimizer.param_groups[0]["lr"],
            **progress.compute.as_dict(device), "time": time.time()}


def merge_update_stats(updates: list[dict]) -> dict:
    """One metrics record for an iteration's optimizer steps: means, except the max |log ratio|
    (a max) and the number of likelihood terms (a sum)."""
    merged = {k: sum(u[k] for u in updates) / len(updates) for k in updates[0]}
    merged["log_ratio_abs_max"] = max(u["log_ratio_abs_max"] for u in updates)
    merged["likelihood_terms"] = sum(u["likelihood_terms"] for u in updates)
    merged["updates"] = len(updates)
    return merged
