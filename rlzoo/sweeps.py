"""Sweeps: the jobs a Hydra multirun will launch, validated before the first one starts.

Named sweeps live in conf/sweep/<name>.yaml (the `sweep` config group) and are run with
`rlzoo-train -m +sweep=<name>`; their grid is `hydra.sweeper.params`, extended by any comma lists
on the command line, exactly as Hydra's basic sweeper expands it.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from rlzoo.config import ConfigError, compose_config, parse_overrides, validate


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of `rlzoo-train -m <overrides>`, in launch order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # pinned hydra-core 1.3

    fixed = [o.input_line for o in parse_overrides(list(overrides)) if not o.is_sweep_override()]
    base = compose_config(fixed, return_hydra_config=True)
    params = base.hydra.sweeper.get("params") or {}
    parsed = parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def sweep_dir(overrides: list[str]) -> Path:
    """The folder a sweep writes into (hydra.sweep.dir: multirun/<sweep_name> unless overridden)."""
    fixed = [o.input_line for o in parse_overrides(list(overrides)) if not o.is_sweep_override()]
    return Path(str(compose_config(fixed, return_hydra_config=True).hydra.sweep.dir))


def validate_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job's config passes `validate`, or ConfigError names the first job that does not."""
    jobs = sweep_jobs(overrides)
    if not jobs:
        raise ConfigError(f"the sweep has no jobs: a value list matched nothing ({' '.join(overrides)}); "
                          f"rlzoo-train --help lists the choices")
    checked_models: set[str] = set()  # each distinct model config is checked (loaded) once
    for job in jobs:
        try:
            cfg = compose_config(job)
            model = OmegaConf.to_yaml(cfg.model)
            validate(cfg, check_model=model not in checked_models)
            checked_models.add(model)
        except ConfigError as exc:
            raise ConfigError(f"sweep job {' '.join(job)}: {exc}") from None
    return jobs
