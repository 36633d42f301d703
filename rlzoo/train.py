"""`rlzoo-train` / `python -m rlzoo.train`: one RL run (or a Hydra multirun sweep with -m).

    rlzoo-train                                   # default recipe (Paper A) on shapes
    rlzoo-train task=toy2d objective=pepg sampler=euler
    rlzoo-train --help                            # components per group, instantly
  rlzoo-train --list                            # every valid objective x estimator x sampler
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlzoo.config import CONF_DIR, GROUPS, ConfigError, available, check_overrides

USAGE = """usage: rlzoo-train [group=choice ...] [key=value ...] [-m for a sweep]

Compose a run from one choice per group (Hydra overrides), e.g.
  rlzoo-train task=toy2d objective=epg estimator=elbo sampler=dpm2 train.lr=1e-4 seed=1
  rlzoo-train experiment=paper_a task=shapes
Runs write to run_dir (default runs/<task>/<objective>-<estimator>-<sampler>/seed<seed>);
rerunning the same command resumes there.
"""


def help_text() -> str:
    lines = [USAGE, "groups and their choices:"]
    for group in GROUPS:
        lines.append(f"  {group:<10} {', '.join(available(group))}")
    lines.append("\nrlzoo-train --list prints every valid objective x estimator x sampler;"
                 " Hydra's own help: rlzoo-train --hydra-help")
    return "\n".join(lines)


def _run_job(cfg) -> None:
    """The body of one Hydra job: validate, build components, train, report."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from rlzoo.config import build, check_run_dir, validate
    from rlzoo.runs import atomic_write_bytes
    from rlzoo.trainer import Trainer, print_report

    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_run_dir(cfg, run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        import json

        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "completed" and summary.get("iterations", 0) >= cfg.train.iterations:
            print(f"[rlzoo] {run_dir} already completed")
            print_report(summary)
            return
    atomic_write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    components = {name: build(cfg[name]) for name in
                  ("task", "sampler", "estimator", "objective", "advantage", "kl", "reward")}
    if cfg.logger.get("_target_"):
        components["extra_loggers"] = [build(
            cfg.logger, run_dir=run_dir, name=f"{cfg.name}/seed{cfg.seed}",
            run_config=OmegaConf.to_container(cfg, resolve=True))]
    trainer = Trainer(cfg, run_dir, components)
    try:
        summary = trainer.fit()
    except BaseException:
        trainer.write_summary("failed")
        raise
    finally:
        for logger in trainer.loggers:
            logger.finish()
    print_report(summary)


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
        if not multirun and not any(a.startswith("-") for a in argv):
            from rlzoo.config import check_run_dir, compose_config, validate

            cfg = compose_config(argv)
            validate(cfg)
            check_run_dir(cfg, Path(cfg.run_dir))
    except ConfigError as exc:
        print(f"rlzoo-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    import hydra

    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_job)()


def _job(cfg) -> None:
    try:
        _run_job(cfg)
    except ConfigError as exc:
        print(f"rlzoo-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
