"""The fault suite, continued (README, Set-up, Runs): `make run`'s result does not depend on the
machine's speed. The default run has no wall-clock guard, says how long it will take here, and a
run a guard stops (one the user sets) is marked stopped_by_time, in its summary and by the report."""
import json
import shutil

import pytest
from common import cli, tiny

from rlzoo.config import compose_config
from rlzoo.runs.progress import Compute, Progress


def test_the_default_run_stops_at_its_model_evaluation_budget_only():
    cfg = compose_config([])  # what `make run` runs
    assert cfg.task.name == "shapes" and cfg.train.max_nfe == 2_000_000 and cfg.train.max_minutes is None


def test_the_estimate_counts_iterations_to_the_budget_and_the_evaluations_due():
    train = compose_config(["task=shapes"]).train
    eval_cfg = compose_config(["task=shapes"]).eval  # every 200 k model evaluations
    progress = Progress(iteration=1, compute=Compute(nfe_forward=2000, nfe_backward=940,
                                                     wall={"rollout": 0.5, "train": 0.6, "eval": 30.0}), evaluations=1)
    line = progress.estimate(train, eval_cfg, since=(0, 0.0, 0))
    # (2 M - 2,940) / 2,940 per iteration -> 680 more; 680 x 2,940 / 200 k -> 9 evaluations due, + the last
    assert line == "680 more iterations at 1.10 s each and 10 evaluations at 30 s each: about 17 min on this machine"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A sweep-like folder: one run its wall-clock guard stopped, one that ran its iterations."""
    from rlzoo.commands.train import main

    root = tmp_path_factory.mktemp("budget")
    for seed, extra in ((0, ["train.max_minutes=0.0001", "train.iterations=1000"]), (1, ["train.iterations=2"])):
        main(tiny(f"seed={seed}", *extra, f"run_dir={root}/sweep/seed{seed}", "eval.every=1000"))
    return root / "sweep"


def test_a_run_its_guard_stopped_is_marked_and_one_that_ran_its_budget_is_not(two_runs, capsys):
    timed = json.loads((two_runs / "seed0" / "summary.json").read_text())
    whole = json.loads((two_runs / "seed1" / "summary.json").read_text())
    assert timed["status"] == whole["status"] == "completed"
    assert timed["stopped_by_time"] is True and timed["iterations"] < 1000
    assert whole["stopped_by_time"] is False and whole["iterations"] == 2


def test_the_report_flags_a_run_its_guard_stopped(two_runs, capsys, tmp_path):
    shutil.copytree(two_runs, tmp_path / "sweep")
    for seed in (0, 1):
        (tmp_path / "sweep" / f"seed{seed}" / ".hydra").mkdir(exist_ok=True)
        (tmp_path / "sweep" / f"seed{seed}" / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
    code, _ = cli(capsys, "report", str(tmp_path / "sweep"), "--no-plots")
    table = (tmp_path / "sweep" / "report" / "table.md").read_text()
    assert code == 0 and "stopped by time (not comparable)" in table.splitlines()[0]
    assert "| seed 0 |" in table and "seed=0: stopped by its wall-clock guard" in table


def test_the_first_iteration_prints_how_long_the_run_will_take(here, tmp_path):
    out = here(tmp_path / "run", "train.iterations=3")
    estimate = [line for line in out.stdout.splitlines() if line.startswith("[rlzoo] estimate: ")]
    assert out.returncode == 0 and len(estimate) == 1 and "2 more iterations at" in estimate[0]
