"""Sweeps: the jobs a Hydra multirun will launch, validated before the first one starts.

Named sweeps live in conf/sweep/<name>.yaml (the `sweep` config group) and are run with
`rlzoo-train -m +sweep=<name>`; their grid is `hydra.sweeper.params`, extended by any comma lists
on the command line, exactly as Hydra's basic sweeper expands it.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from rlzoo.config import (
    ConfigError,
    check_run_dir,
    check_sweep_name,
    compose_config,
    parse_overrides,
    path_component,
    validate,
)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of `rlzoo-train -m <overrides>`, in launch order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # pinned hydra-core 1.3

    fixed = [o.input_line for o in parse_overrides(list(overrides)) if not o.is_sweep_override()]
    base = compose_config(fixed, return_hydra_config=True)
    params = base.hydra.sweeper.get("params") or {}
    parsed = parse_overrides([f"{k}={v}" for k, v in params.items()] + list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def adhoc_sweep_name(overrides: list[str]) -> str:
    """The folder of a sweep whose sweep_name is not set: its command line's overrides (sorted,
    without the ones that change no result, in characters a shell takes unquoted, the first 60)
    and a hash of them, so unrelated sweeps never share a folder and the same command finds its
    own folder again (and resumes)."""
    shown = sorted(o for o in overrides
                   if not o.lstrip("+~").startswith(("hydra", "threads=", "progress_bar=", "logger", "sweep_name=")))
    text = ",".join(shown)
    return f"{re.sub(r'[^A-Za-z0-9._,=+-]', '_', text)[:60]}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def sweep_dir(overrides: list[str]) -> Path:
    """The folder a sweep writes into (hydra.sweep.dir: multirun/<sweep_name> unless overridden)."""
    fixed = [o.input_line for o in parse_overrides(list(overrides)) if not o.is_sweep_override()]
    return Path(str(compose_config(fixed, return_hydra_config=True).hydra.sweep.dir))


def check_launcher(overrides: list[str]) -> None:
    """A SLURM launcher (hydra/launcher=slurm_*) needs SLURM here: without `sbatch` on the PATH
    the sweep is refused in one line, before any job is validated or submitted."""
    import shutil

    launcher = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("hydra/launcher=")), "")
    if "slurm" in launcher and shutil.which("sbatch") is None:
        raise ConfigError(f"hydra/launcher={launcher} submits the sweep's jobs to a SLURM cluster, and sbatch is not "
                          f"on this machine's PATH; run it on the cluster's login node (hydra/launcher=local_2rank "
                          f"runs ranks here)")


def validate_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job's config passes `validate` and every job has a run directory of its own under the
    sweep's folder that can hold its run (`check_run_dir`: a rerun resumes), or ConfigError names
    the first job that does not."""
    jobs = sweep_jobs(overrides)
    if not jobs:
        raise ConfigError(f"the sweep has no jobs: a value list matched nothing ({' '.join(overrides)}); "
                          f"rlzoo-train --help lists the choices")
    checked_models: set[str] = set()  # each distinct model config is checked (loaded) once
    folders: dict[str, list[str]] = {}  # run directory (under the sweep's) -> the job that writes it
    for job in jobs:
        try:
            cfg = compose_config(job, return_hydra_config=True)
            with open_dict(cfg):
                hydra = cfg.pop("hydra")
            check_sweep_name(cfg.sweep_name)
            folder = path_component(hydra.job.override_dirname)
            if folder in folders:
                raise ConfigError(f"it would write to the same run directory as job {' '.join(folders[folder])} "
                                  f"({folder or 'the sweep folder itself'}): the keys that tell them apart are "
                                  f"left out of run directory names ({', '.join(hydra.job.config.override_dirname.exclude_keys)})")
            folders[folder] = job
            model = OmegaConf.to_yaml(cfg.model)
            validate(cfg, check_model=model not in checked_models)
            checked_models.add(model)
            check_run_dir(cfg, Path(str(hydra.sweep.dir)) / folder)  # a job's directory may hold only this job's run
        except ConfigError as exc:
            raise ConfigError(f"sweep job {' '.join(job)}: {exc}") from None
    return jobs
