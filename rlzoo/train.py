"""`rlzoo-train` / `python -m rlzoo.train`: one RL run (or a Hydra multirun sweep with -m).

    rlzoo-train                                   # default recipe (Paper A) on shapes
    rlzoo-train task=toy2d objective=pepg sampler=euler
    rlzoo-train --help                            # components per group, instantly
    rlzoo-train --list                            # every valid objective x estimator x sampler
    rlzoo-train -m +sweep=smoke                   # a named sweep from rlzoo/conf/sweep/

A sweep is validated job by job before the first job starts. Inside a sweep a job that crashes or
goes non-finite is marked failed in its summary.json and the sweep goes on; rerunning the same
command skips completed runs and resumes the others from their checkpoints.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlzoo.config import CONF_DIR, GROUPS, ConfigError, available, check_overrides

USAGE = """usage: rlzoo-train [group=choice ...] [key=value ...] [-m for a sweep]

Compose a run from one choice per group (Hydra overrides), e.g.
  rlzoo-train task=toy2d objective=epg estimator=elbo sampler=dpm2 optimizer.lr=1e-4 seed=1
  rlzoo-train experiment=paper_a task=shapes
Runs write to run_dir (default runs/<task>/<objective>-<estimator>-<sampler>/seed<seed>);
rerunning the same command resumes there.
  rlzoo-train -m +sweep=smoke                    # a named sweep (rlzoo/conf/sweep/<name>.yaml)
  rlzoo-train -m objective=epg,pepg seed=0,1,2   # an ad-hoc sweep into multirun/adhoc/
"""


def help_text() -> str:
    lines = [USAGE, "groups and their choices:"]
    for group in GROUPS:
        lines.append(f"  {group:<12} {', '.join(available(group))}")
    lines.append("\nrlzoo-train --list prints every valid objective x estimator x sampler;"
                 " Hydra's own help: rlzoo-train --hydra-help")
    return "\n".join(lines)


def _run_job(cfg, in_sweep: bool = False) -> None:
    """The body of one Hydra job: validate, build components, train, report."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlzoo.config import build, build_components, check_run_dir, validate
    from rlzoo.runs import CheckpointError, atomic_write_bytes, is_finished, print_report
    from rlzoo.trainer import Trainer

    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_run_dir(cfg, run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        import json

        summary = json.loads(summary_path.read_text())
        if is_finished(summary, cfg.train):
            print(f"[rlzoo] {run_dir} already completed")
            print_report(summary)
            return
    atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    loggers = []
    if cfg.logger.get("_target_"):
        group, name, run_config = logger_identity(cfg, in_sweep, list(HydraConfig.get().overrides.task))
        loggers.append(build(OmegaConf.merge(cfg.logger, {"group": group}), run_dir=run_dir, name=name,
                             run_config=run_config))
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir, build_components(cfg, loggers))
        summary = trainer.fit()
    except CheckpointError:
        raise  # the run directory stays as it was; the message says what to do
    except BaseException as exc:
        if trainer is not None:
            trainer.write_summary("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for logger in loggers:
            logger.finish()
    print_report(summary)


def logger_identity(cfg, in_sweep: bool, overrides: list[str]) -> tuple[str, str, dict]:
    """(group, run name, config) for an external logger: inside a sweep every run shares the
    sweep's name as its group and is named by its overrides, which also become config columns
    under `sweep.overrides`; a single run is grouped by its recipe name."""
    from omegaconf import OmegaConf

    from rlzoo.config import override_dict

    chosen = override_dict(overrides)
    group = cfg.logger.get("group") or (cfg.sweep_name if in_sweep else cfg.name)
    name = ",".join(overrides) if in_sweep and overrides else f"{cfg.name}/seed{cfg.seed}"
    config = {**OmegaConf.to_container(cfg, resolve=True),
              "sweep": {"name": cfg.sweep_name if in_sweep else None, "overrides": chosen}}
    return group, name, config


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(help_text())
        return
    if "--list" in argv:
        from rlzoo.config import valid_grid

        grid = valid_grid()
        print(f"{len(grid)} valid objective x estimator x sampler combinations:")
        for objective, estimator, sampler in grid:
            print(f"  objective={objective} estimator={estimator} sampler={sampler}")
        return
    if "--hydra-help" in argv:
        argv[argv.index("--hydra-help")] = "--help"
    multirun = "-m" in argv or "--multirun" in argv
    try:
        check_overrides(argv)
        options = [a for a in argv if a.startswith("-")]
        if not multirun and not options:
            from rlzoo.config import check_run_dir, compose_config, validate

            cfg = compose_config(argv)
            validate(cfg)
            check_run_dir(cfg, Path(cfg.run_dir))
        elif multirun and set(options) <= {"-m", "--multirun"}:
            from rlzoo.sweeps import validate_sweep

            jobs = validate_sweep([a for a in argv if not a.startswith("-")])
            print(f"[rlzoo] sweep of {len(jobs)} jobs validated", flush=True)
    except ConfigError as exc:
        print(f"rlzoo-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    import hydra

    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_job)()


def _job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from rlzoo.runs import CheckpointError

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        _run_job(cfg, in_sweep)
    except (ConfigError, CheckpointError) as exc:
        if in_sweep:
            return _job_failed(exc)
        print(f"rlzoo-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # one bad job must not stop a sweep; its summary says why
        if not in_sweep:
            raise
        _job_failed(exc)


def _job_failed(exc: BaseException) -> None:
    import traceback

    from hydra.core.hydra_config import HydraConfig

    from rlzoo.runs import atomic_write_bytes, write_summary

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    atomic_write_bytes(run_dir / "error.txt", traceback.format_exc().encode())
    if not (run_dir / "summary.json").exists():  # failed before the trainer could say so
        write_summary(run_dir, "failed", error=f"{type(exc).__name__}: {exc}")
    print(f"[rlzoo] job {run_dir} failed: {type(exc).__name__}: {exc} (the sweep goes on)",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
