"""What a run writes into its directory while it trains (README, Runs): config.yaml, the logs, the
sample grids, summary.json, a LoRA for diffusers, its console lines. Rank 0 owns the run directory
(README, Data parallelism): on every other rank each of these is a no-op, so the trainer never
asks which rank it runs on."""
from __future__ import annotations

from pathlib import Path

from rlzoo.runs.files import atomic_write_bytes
from rlzoo.runs.loggers import JsonlLogger
from rlzoo.runs.summary import write_summary


def grid_file_name(record: dict) -> str:
    """The name of an evaluation's sample grid: its iteration and the compute spent by then."""
    return f"iter{record['iteration']:06d}_nfe{record['nfe_forward'] + record['nfe_backward']}.png"


class RunRecord:
    """The run directory's writer: `writes` is True on rank 0 (one process: always)."""

    def __init__(self, run_dir: Path, loggers: list, writes: bool = True):
        self.run_dir, self.writes = Path(run_dir), writes
        self.loggers = [JsonlLogger(self.run_dir), *loggers] if writes else []

    def say(self, line: str) -> None:
        if self.writes:
            print(line)

    def config(self, cfg, only_if_missing: bool = False) -> None:
        """config.yaml, resolved, not world-readable (`rlzoo evaluate` and `export` read it)."""
        from omegaconf import OmegaConf

        path = self.run_dir / "config.yaml"
        if self.writes and not (only_if_missing and path.exists()):
            atomic_write_bytes(path, OmegaConf.to_yaml(cfg, resolve=True).encode(), private=True)

    def log(self, kind: str, record: dict) -> None:
        for logger in self.loggers:
            logger.log(kind, record)

    def samples(self, task, x0, cond, record: dict, moment: str | None = None) -> None:
        """An evaluation's sample grid, samples/iter<iteration>_nfe<compute>.png, to every logger;
        the first and last (`moment` "before", "after") also as samples/<moment>.png."""
        if not self.writes:
            return
        path = self.run_dir / "samples" / grid_file_name(record)
        task.save_grid(x0, cond, path)
        for logger in self.loggers:
            logger.log_image("heldout", path, record)
        if moment is not None:
            atomic_write_bytes(self.run_dir / "samples" / f"{moment}.png", path.read_bytes())

    def cut_logs(self, iteration: int) -> None:
        """metrics.jsonl and eval.jsonl cut back to a checkpoint's iteration (a damaged file kept aside)."""
        from rlzoo.runs.files import truncate_jsonl

        for name in ("metrics", "eval") if self.writes else ():
            aside = truncate_jsonl(self.run_dir / f"{name}.jsonl", iteration)
            if aside is not None:
                print(f"[rlzoo] {name}.jsonl had lines that are not JSON; the file as it was is kept as {aside}")

    def adapter(self, policy, view: str, info: dict) -> None:
        """A LoRA policy's adapter in diffusers' format, in <run_dir>/lora (others: nothing)."""
        if self.writes:
            policy.export_adapter(view, self.run_dir / "lora", info)

    def summary(self, status: str, progress, **fields) -> dict | None:
        return write_summary(self.run_dir, status, progress, **fields) if self.writes else None
