"""`rlzoo-train` / `python -m rlzoo.commands.train`: one RL run (or a Hydra multirun sweep with -m).

    rlzoo-train                                   # default recipe (Paper A) on shapes
    rlzoo-train task=toy2d objective=pepg sampler=euler
    rlzoo-train --help                            # components per group, instantly
    rlzoo-train --list                            # every valid objective x estimator x sampler
    rlzoo-train -m +sweep=smoke                   # a named sweep from conf/sweep/

A sweep is validated job by job before the first job starts. Inside a sweep a job that crashes or
goes non-finite is marked failed in its summary.json and the sweep goes on; rerunning the same
command skips completed runs and resumes the others from their checkpoints.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from rlzoo import distributed
from rlzoo.config import CONF_DIR, GROUPS, available, check_overrides
from rlzoo.errors import one_line_errors

USAGE = """usage: rlzoo-train [group=choice ...] [key=value ...] [-m for a sweep]

Compose a run from one choice per group (Hydra overrides), e.g.
  rlzoo-train task=toy2d objective=epg estimator=elbo sampler=dpm2 optimizer.lr=1e-4 seed=1
  rlzoo-train experiment=paper_a task=shapes
Runs write to run_dir (default runs/<task>/<objective>-<estimator>-<sampler>/seed<seed>, the
recipe's name for an experiment, followed by what else you changed: ...-dpm2,reward=pickscore/);
rerunning the same command resumes there.
  rlzoo-train -m +sweep=smoke                    # a named sweep (conf/sweep/<name>.yaml)
  rlzoo-train -m objective=epg,pepg seed=0,1,2 sweep_name=mine   # into multirun/mine/ (default: a name
                                                                 # made of the command line)
"""


def help_text() -> str:
    lines = [USAGE, "groups and their choices:"]
    for group in GROUPS:
        lines.append(f"  {group:<12} {', '.join(available(group))}")
    lines.append("\nrlzoo-train --list prints every valid objective x estimator x sampler;"
                 " Hydra's own help: rlzoo-train --hydra-help")
    return "\n".join(lines)


def _run_job(cfg, in_sweep: bool = False) -> None:
    """The body of one Hydra job: validate, own the run directory, build components, train, report."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    from rlzoo.config import build, build_components, check_run_dir, plain, validate
    from rlzoo.runs import is_finished, print_report, read_summary, run_lock
    from rlzoo.runs.directory import remove_temporary_files, set_aside_failed_start, write_hydra_record
    from rlzoo.runs.files import checkpoint_path
    from rlzoo.trainer import Trainer

    distributed.export_submitit_env()  # a submitit job's tasks are ranks (SLURM presets)
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    main = distributed.is_main_process()  # under torchrun, rank 0 owns the run directory and writes
    with run_lock(run_dir) if main else contextlib.nullcontext():
        # (a single run took the lock before Hydra started; a sweep's job takes it here)
        check_run_dir(cfg, run_dir)  # everything a resume needs is checked before anything is written
        summary = read_summary(run_dir)
        if summary is not None and summary.get("status") == "completed" and is_finished(summary, cfg.train):
            if main:
                print(f"[rlzoo] {run_dir} already completed")
                print_report(summary)
            return
        if main:
            remove_temporary_files(run_dir)  # what a killed write left (.<name>.<random>.tmp)
            if not checkpoint_path(run_dir).exists():
                set_aside_failed_start(run_dir)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        torch.manual_seed(int(cfg.seed))
        loggers, trainer, dist = [], None, distributed.SINGLE
        try:
            dist = distributed.init(cfg.device, float(cfg.get("dist", {}).get("timeout_s", 1800)))
            trainer = Trainer(cfg, run_dir, build_components(cfg), dist)
            trainer.restore()  # a resume: its checkpoint read and checked before any file is written
            if main:
                write_hydra_record(run_dir, cfg)
            if cfg.logger.get("_target_") and main:
                group, name, run_config = logger_identity(cfg, in_sweep, list(HydraConfig.get().overrides.task))
                node = {**plain(cfg.logger), "group": group}
                loggers.append(build(node, recursive=False, run_dir=run_dir, name=name, run_config=run_config))
                trainer.record.loggers.append(loggers[-1])
            summary = trainer.fit()
        except BaseException as exc:
            raise RunFailed(exc, *_record_failure(run_dir, trainer, exc, main)) from exc
        finally:
            for logger in loggers:
                logger.finish()
            distributed.shutdown(dist)
    if main and summary is not None:
        print_report(summary)


class RunFailed(Exception):
    """A job's failure after it was recorded in its run directory: `what` is the one line,
    `log` the file that holds the traceback (None for bad input, which needs none)."""

    def __init__(self, cause: BaseException, what: str, log: Path | None):
        super().__init__(what)
        self.cause, self.what, self.log = cause, what, log


def _record_failure(run_dir: Path, trainer, exc: BaseException, main: bool = True) -> tuple[str, Path | None]:
    """Say in the run directory how the run ended, without rewriting its record: bad input (a
    checkpoint that does not fit, a config that does not) writes nothing; an interruption writes
    summary.json with status "interrupted"; any other failure writes the traceback to error.txt
    and status "failed". A summary is written only by a run whose state was loaded or begun
    (a resume that fails while building its model leaves a completed run's summary alone)."""
    from rlzoo.errors import BadInput, one_line, save_traceback, signal_number
    from rlzoo.runs import write_summary

    started = trainer if trainer is not None and trainer.started else None  # (its state loaded or begun)
    number = signal_number(exc)
    if not main:  # rank 0 records the run's end; the others only say it
        return one_line(exc), None
    if isinstance(exc, SystemExit):  # submitit requeues a preempted or timed-out job this way
        what = "stopped to be requeued (a cluster's preemption or time limit); the requeued job resumes"
        if started is not None:
            started.write_summary("interrupted", error=what)
        return what, None
    if number is not None:
        import signal

        done = started.progress.iteration if started is not None else 0
        resume = (f"; the checkpoint holds iteration {started.checkpoint_iteration}: rerun the same command to resume"
                  if started is not None and started.checkpoint_iteration is not None else "")
        what = f"interrupted by {signal.Signals(number).name} after {done} iterations{resume}"
        if number == signal.SIGTERM and "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun stops the others when one dies
            what += " (torchrun stops every rank when one fails: its report names the rank)"
        if started is not None:
            started.write_summary("interrupted", error=what)
        return what, None
    what = one_line(exc)
    if isinstance(exc, BadInput):
        return what, None
    log = save_traceback("rlzoo-train", exc, run_dir / "error.txt")
    if started is not None:
        started.write_summary("failed", error=what)
    elif not (run_dir / "summary.json").exists():  # failed before the trainer could say so
        write_summary(run_dir, "failed", error=what)
    return what, log


def logger_identity(cfg, in_sweep: bool, overrides: list[str]) -> tuple[str, str, dict]:
    """(group, run name, config) for an external logger: inside a sweep every run shares the
    sweep's name as its group and is named by its overrides, which also become config columns
    under `sweep.overrides`; a single run is grouped by its recipe name."""

    from rlzoo.config import override_dict, plain

    chosen = override_dict(overrides)
    group = cfg.logger.get("group") or (cfg.sweep_name if in_sweep else cfg.name)
    name = ",".join(overrides) if in_sweep and overrides else f"{cfg.name}/seed{cfg.seed}"
    config = {**plain(cfg),
              "sweep": {"name": cfg.sweep_name if in_sweep else None, "overrides": chosen}}
    return group, name, config


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.getcwd() not in sys.path:  # a user's own components (`_target_: my_rewards.MyReward`) import from
        sys.path.append(os.getcwd())  # the directory the command runs in, as under `python -m`
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
    _launch(argv, multirun)


# Hydra's own command-line options that rlzoo passes on: (option, takes a value); the rest (other
# config paths or names) would bypass the shipped config tree, and a typo should not print Hydra's
# whole usage.
HYDRA_OPTIONS = {"-m": False, "--multirun": False, "-r": False, "--run": False, "-c": True, "--cfg": True,
                 "--resolve": False, "-p": True, "--package": True, "-i": True, "--info": True, "--help": False}
PRINT_ONLY = {"-c", "--cfg", "-i", "--info", "--help"}  # they print and run no job


@one_line_errors("rlzoo-train")
def _launch(argv: list[str], multirun: bool) -> None:
    """Validate, then hand the run (or sweep) to Hydra. The run's directory (a sweep's folder) is
    locked here, before Hydra starts, so a second process can touch nothing of it."""
    from rlzoo.commands.ranks import nproc_option
    from rlzoo.config import ConfigError
    from rlzoo.config.compose import literal_paths, plain_sweep

    nproc, argv = nproc_option(plain_sweep(argv))
    argv = argv if multirun else literal_paths(argv)
    options, overrides = _split_argv(argv)
    check_overrides(overrides)
    if set(options) & PRINT_ONLY:
        return _hydra(argv)
    if nproc is not None and (multirun or "RANK" in os.environ):
        raise ConfigError("--nproc_per_node starts the ranks of one run: not for a sweep (hydra/launcher=local_2rank "
                          "or a SLURM preset runs a sweep's jobs on several ranks) nor under another launcher")
    return _launch_sweep(argv, overrides) if multirun else _launch_run(argv, overrides, nproc)


def _split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra options, overrides) of a command line; anything else is refused in one line."""
    from rlzoo.config import ConfigError

    options, overrides, expect_value = [], [], False
    for item in argv:
        if expect_value:  # an option's value (--cfg job)
            expect_value = False
            continue
        if item.startswith("-"):
            if item not in HYDRA_OPTIONS:
                raise ConfigError(f"unknown option {item}; rlzoo-train takes key=value overrides, -m (a sweep), "
                                  f"--help, --list, --hydra-help and Hydra's {', '.join(sorted(HYDRA_OPTIONS))}")
            options.append(item)
            expect_value = HYDRA_OPTIONS[item]
        elif "=" not in item and not item.startswith("~"):  # (~key deletes a key)
            raise ConfigError(f"{item!r} is not key=value (an override) nor an option; see rlzoo-train --help")
        else:
            overrides.append(item)
    if any(o.split("=")[0].lstrip("+~").startswith(("hydra.run.dir", "hydra.sweep.subdir", "hydra.output_subdir"))
           for o in argv):
        raise ConfigError("set the run's directory with run_dir=... (and a sweep's with hydra.sweep.dir=...); "
                          "hydra.run.dir, hydra.sweep.subdir and hydra.output_subdir are rlzoo's")
    return options, overrides


def _launch_run(argv: list[str], overrides: list[str], nproc: int | None) -> None:
    """One run: named by what it changes, validated for its ranks, its directory checked and
    locked; then Hydra runs it (or its ranks, --nproc_per_node)."""
    from rlzoo.config import check_run_dir, compose_config, override_dict, run_variant, validate
    from rlzoo.runs import run_lock

    chosen = override_dict(overrides)
    if "run_dir" not in chosen and "variant" not in chosen:  # runs that differ in any choice: their own directory
        variant = run_variant(overrides)
        if variant:  # (quoted: Hydra would read its ',' as a sweep; it holds no quote, see path_component)
            overrides.append(f"variant='{variant}'")
            argv.append(f"variant='{variant}'")
    cfg = compose_config(overrides)
    with distributed.world_of(nproc):  # (the ranks' geometry, checked as each rank will check it)
        validate(cfg)
    if not distributed.is_main_process():  # under torchrun rank 0 owns the run directory; the others follow it
        return _hydra(argv)
    check_run_dir(cfg, Path(cfg.run_dir))  # refused before the lock file is even created
    with run_lock(Path(cfg.run_dir)):
        check_run_dir(cfg, Path(cfg.run_dir))
        if nproc is not None and nproc > 1:
            from rlzoo.commands.ranks import launch

            return launch(nproc, argv, Path(cfg.run_dir))
        return _hydra(argv)


def _launch_sweep(argv: list[str], overrides: list[str]) -> None:
    """A sweep: every job validated and its directory checked first; the sweep's folder locked."""
    from rlzoo.commands.sweeps import adhoc_sweep_name, check_launcher, sweep_dir, validate_sweep
    from rlzoo.config import compose_config, parse_overrides
    from rlzoo.runs import run_lock
    from rlzoo.runs.lock import SWEEP_LOCK_NAME

    check_launcher(overrides)
    fixed = [o.input_line for o in parse_overrides(overrides) if not o.is_sweep_override()]
    if compose_config(fixed).sweep_name is None:  # an ad-hoc sweep: a folder of its own, named by its command
        name = f"sweep_name='{adhoc_sweep_name(overrides)}'"  # (quoted: Hydra would read its ',' as a sweep)
        overrides.append(name)
        argv.append(name)
    jobs = validate_sweep(overrides)
    print(f"[rlzoo] sweep of {len(jobs)} jobs validated", flush=True)
    folder = sweep_dir(overrides)
    with run_lock(folder, name=SWEEP_LOCK_NAME, what="sweep directory"):
        _hydra(argv)
    print(f"[rlzoo] sweep finished: {folder}; its table and plots: rlzoo report {folder}", flush=True)


def _hydra(argv: list[str]) -> None:
    import hydra

    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_job)()


def _job(cfg) -> None:
    """One Hydra job. Alone, any failure ends the process with one line and its exit code; inside
    a sweep a failed job is reported in one line and the sweep goes on (an interruption stops it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from rlzoo.errors import RunLocked, fail, one_line, signal_number

    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        _run_job(cfg, in_sweep)
    except RunFailed as exc:
        if isinstance(exc.cause, SystemExit):  # submitit's requeue: it must see the exit
            raise exc.cause from None
        if in_sweep and signal_number(exc.cause) is None:
            where = f" (traceback in {exc.log})" if exc.log else ""
            print(f"[rlzoo] job {HydraConfig.get().runtime.output_dir} failed: {exc.what}{where}; the sweep goes on",
                  file=sys.stderr, flush=True)
            return
        raise fail("rlzoo-train", exc.cause, what=exc.what, saved=exc.log) from None
    except RunLocked as exc:
        if in_sweep:  # another process runs this job (a second copy of the sweep): leave it alone
            print(f"[rlzoo] job skipped: {exc}", file=sys.stderr, flush=True)
            return
        raise fail("rlzoo-train", exc) from None
    except BaseException as exc:  # before the run directory was owned: bad input, an interruption
        if isinstance(exc, SystemExit):
            raise
        if in_sweep and signal_number(exc) is None:
            print(f"[rlzoo] job {HydraConfig.get().runtime.output_dir} failed: {one_line(exc)} (the sweep goes on)",
                  file=sys.stderr, flush=True)
            return
        raise fail("rlzoo-train", exc) from None


if __name__ == "__main__":
    main()
