"""Whether a run directory can hold this run: the resume rules (README, Runs)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlzoo.errors import ConfigError


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """The run directory can hold this run (rlzoo.runs.directory: a folder that is empty or holds a
    run, with no links where rlzoo writes), and a run already there is this one: the same config
    (RESUMABLE_KEYS aside) in its config.yaml and in its checkpoint's record, a checkpoint that
    can be read. A run is there once it has started (config.yaml beside a checkpoint, or beside a
    completed summary); a start that failed before its first checkpoint claims nothing, so the
    corrected command runs into the same directory. Nothing is written."""
    from rlzoo.runs.directory import check_run_dir_layout
    from rlzoo.runs.files import checkpoint_path, peek_checkpoint
    from rlzoo.runs.summary import read_summary

    run_dir = Path(run_dir)
    check_run_dir_layout(run_dir)
    saved, checkpoint = run_dir / "config.yaml", checkpoint_path(run_dir)
    summary = read_summary(run_dir) or {}
    completed = summary.get("status") == "completed"
    if not saved.exists() or not (checkpoint.exists() or completed):
        return
    from rlzoo.runs.reading import UnreadableFile, load_config

    try:
        old = OmegaConf.to_container(load_config(saved), resolve=False)
    except UnreadableFile as exc:  # a damaged config.yaml: the directory still holds a run
        raise ConfigError(f"run directory {run_dir} holds a run whose config.yaml cannot be read ({exc}); "
                          f"choose another run_dir=...") from None
    new = run_fingerprint(cfg)
    diffs = config_differences(old if isinstance(old, dict) else {}, new)
    if diffs:
        raise ConfigError(
            f"run directory {run_dir} holds a run with a different config (differs in {', '.join(diffs[:5])}); "
            f"choose another run_dir=... or delete that directory")
    if checkpoint.exists():
        from rlzoo.errors import CheckpointError

        diffs = config_differences(peek_checkpoint(checkpoint).get("run"), new)
        if diffs:
            raise CheckpointError(f"checkpoint {checkpoint} was written by a run with another config (differs in "
                                  f"{', '.join(diffs[:5])}); it was left in place: choose another run_dir=...")
    else:
        from rlzoo.runs.progress import is_finished

        if not is_finished(summary, cfg.train):
            raise ConfigError(f"run directory {run_dir} holds a completed run of {summary.get('iterations')} "
                              f"iterations whose checkpoint is gone, so it cannot be continued; choose another "
                              f"run_dir=...")


def run_fingerprint(cfg: DictConfig) -> dict:
    """The resolved config as plain values: what a checkpoint and config.yaml record of a run."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_differences(old: dict | None, new: dict) -> list[str]:
    """Keys whose values differ between two runs' configs, except those a resumed run may change
    (RESUMABLE_KEYS); none when `old` is unknown (a checkpoint from before fingerprints)."""
    if not isinstance(old, dict):
        return []
    old = {**{k: v for k, v in ADDED_LATER.items() if not isinstance(v, dict)}, **old,
           **{k: {**v, **old.get(k, {})} for k, v in ADDED_LATER.items() if isinstance(v, dict)}}
    return [k for k in _diff(old, new) if not k.startswith(RESUMABLE_KEYS)]


# Keys added after runs were recorded, with the value those runs had without naming it.
ADDED_LATER = {"train": {"rng": "stream"}, "init_from": None}


# Keys that may change when a run is resumed: they do not change what is trained (sweep_name only
# names where a sweep writes, so a run copied into another sweep with a larger budget resumes;
# run_dir only where the run lives, so a moved or copied run resumes in its new place;
# evaluations draw from their own fixed noise, so how often they happen changes no update;
# init_from only decides where a new run starts).
RESUMABLE_KEYS = ("train.iterations", "train.max_minutes", "train.max_nfe", "progress_bar", "logger", "threads",
                  "sweep_name", "run_dir", "eval.every", "eval.every_nfe", "eval.teacher_steps",
                  "task.embedding_cache", "dist", "checkpoint_every", "init_from")


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
