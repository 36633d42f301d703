"""Sweeps (expansion, validation before compute, fault tolerance, resume), the statistics behind
ablation tables, and `rlzoo report`."""
import json
import math
import subprocess
from pathlib import Path

import pytest
from common import BIN, ENV, REPO, rlzoo_train_here

from rlzoo.commands.sweeps import sweep_jobs
from rlzoo.config import ConfigError, check_overrides
from rlzoo.stats import mean_ci, ratio_ci, t_quantile_975

TINY = ["train.iterations=4", "train.batch_size=16", "train.group_size=4", "train.micro_batch_size=16",
        "sampler.num_steps=3", "eval.samples=32", "eval.num_steps=2", "eval.every=2", "threads=1",
        "progress_bar=false"]


def test_t_quantiles_match_tables():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303 and t_quantile_975(30) == 2.042
    assert t_quantile_975(35) == 2.042 and t_quantile_975(1000) == 1.960
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_ci_on_known_values():
    mean, half, n = mean_ci([1.0, 2.0, 3.0])  # s = 1
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.303 / math.sqrt(3), abs=1e-12)
    mean, half, n = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(half) and n == 1
    assert mean_ci([])[2] == 0


def test_ratio_ci_on_known_values():
    # means 12 and 6 (s = 2 and 1, n = 3): se = sqrt(4/(3*144) + 1/(3*36)) = 0.1360828
    ratio, low, high = ratio_ci([10.0, 12.0, 14.0], [5.0, 6.0, 7.0])
    assert ratio == 2.0
    assert low == pytest.approx(2 / math.exp(4.303 * 0.1360828), rel=1e-6)
    assert high == pytest.approx(2 * math.exp(4.303 * 0.1360828), rel=1e-6)


def test_named_sweep_expands_like_hydra():
    jobs = sweep_jobs(["+sweep=smoke"])
    assert len(jobs) == 8 and ["objective=epg", "sampler=dpm2", "seed=0", "sweep=smoke"] in jobs
    assert len(sweep_jobs(["+sweep=smoke", "optimizer.lr=1e-3,2e-3"])) == 16


def test_sweep_functions_expand_and_are_validated():
    """Hydra's glob / choice / range work on the command line (they used to be read as a
    component name and refused), and every value they produce is checked."""
    jobs = sweep_jobs(["task=toy2d", "objective=glob(pepg*)", "seed=range(0,3)", "sampler=choice(euler,dpm2)"])
    assert len(jobs) == 2 * 3 * 2
    assert ["task=toy2d", "objective=pepg_noratio", "seed=2", "sampler=euler"] in jobs
    with pytest.raises(ConfigError, match="unknown sampler 'heun'"):
        check_overrides(["sampler=choice(euler,heun)"])


def test_a_bad_job_stops_the_sweep_before_any_compute(tmp_path):
    out = rlzoo_train_here("-m", "+sweep=smoke", "train.group_size=16,7", f"hydra.sweep.dir={tmp_path}/sweep")
    assert out.returncode == 2
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and "train.group_size=7" in err and "sweep job" in err
    assert not (tmp_path / "sweep").exists()


def test_unknown_sweep_lists_the_named_sweeps():
    out = rlzoo_train_here("-m", "+sweep=nope")
    assert out.returncode == 2 and "unknown sweep 'nope'" in out.stderr and "smoke" in out.stderr


def run_sweep(sweep_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    rewards = "rlzoo.rewards.VerifierReward,faulty_rewards.CrashingReward,faulty_rewards.NaNReward"
    return rlzoo_train_here("-m", "task=toy2d", f"reward._target_={rewards}", "seed=0,1",
                            f"hydra.sweep.dir={sweep_dir}", *TINY, *extra)


def test_crashing_and_nan_jobs_do_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_sweep(sweep)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"rlzoo report {sweep}" in out.stdout  # the end says what to run next
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(summaries) == 6
    status = {name: s["status"] for name, s in summaries.items()}
    assert sum(v == "completed" for v in status.values()) == 2
    crashed = [s for n, s in summaries.items() if "Crashing" in n]
    assert all(s["status"] == "failed" and "deliberate crash" in s["error"] for s in crashed)
    nan = [s for n, s in summaries.items() if "NaN" in n]
    assert all(s["status"] == "failed" and "non-finite loss" in s["error"] for s in nan)

    from rlzoo.report import report

    table = report(sweep, threshold=0.5)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 4  # header + 3 rows (one per reward component)
    verifier = next(line for line in lines if "VerifierReward" in line)
    crashing = next(line for line in lines if "CrashingReward" in line)
    assert verifier.endswith("| 2 | 0 |") and crashing.endswith("| 0 | seed 0, seed 1 |")
    for name in ("table.md", "table.csv", "table.tex", "runs.csv", "curves.png", "reward_vs_kl.png"):
        assert (sweep / "report" / name).stat().st_size > 0
    assert "deliberate crash" in (sweep / "report" / "table.md").read_text()

    # Rerun: completed runs are skipped, the others are tried again.
    again = run_sweep(sweep)
    assert again.returncode == 0
    assert again.stdout.count("already completed") == 2


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      pytest.param(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
                                                   marks=pytest.mark.slow)])  # (submitit: make test-all)
def test_parallel_and_cluster_launchers(tmp_path, launcher):
    """joblib (parallel local jobs) and submitit (SLURM), the latter through its local executor."""
    out = subprocess.run([str(BIN / "rlzoo-train"), "-m", "task=toy2d", "seed=0,1", *launcher,
                          f"hydra.sweep.dir={tmp_path}", *TINY], capture_output=True, text=True,
                         cwd=REPO, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")]
    assert sorted(s["status"] for s in summaries) == ["completed", "completed"]
    assert {Path(s["run_dir"]).name.split("seed=")[1][0] for s in summaries} == {"0", "1"}


def test_wandb_identity_groups_a_sweep_by_its_name():
    from rlzoo.commands.train import logger_identity
    from rlzoo.config import compose_config

    cfg = compose_config(["+sweep=smoke", "logger=wandb", "objective=pepg", "seed=1"])
    group, name, config = logger_identity(cfg, True, ["objective=pepg", "seed=1", "+sweep=smoke"])
    assert group == "smoke" and name == "objective=pepg,seed=1,+sweep=smoke"
    assert config["sweep"]["overrides"] == {"objective": "pepg", "seed": "1", "sweep": "smoke"}
    assert config["objective"]["name"] == "pepg"
    single = compose_config(["task=toy2d", "logger=wandb"])
    group, name, _ = logger_identity(single, False, ["task=toy2d"])
    assert group == "epg-elbo-dpm2" and name == "epg-elbo-dpm2/seed0"


def test_crossing_is_interpolated_between_evaluations():
    from rlzoo.report import crossing

    curve = [(0.0, 0.1), (100.0, 0.2), (200.0, 0.6), (300.0, 0.4)]
    assert crossing(curve, 0.5) == pytest.approx(175.0)  # 100 + (0.5 - 0.2)/(0.6 - 0.2) * 100
    assert crossing(curve, 0.6) == 200.0 and crossing(curve, 0.05) == 0.0
    assert math.isnan(crossing(curve, 0.7))


def test_kaplan_meier_median_on_known_values():
    from rlzoo.report import kaplan_meier_median

    # no censoring: the sample median (the first time S(t) <= 0.5)
    assert kaplan_meier_median([3.0, 1.0, 2.0], [True] * 3) == 2.0
    # times 1, 2+, 3, 4+ (+ = censored): S(1) = 3/4, S(3) = 3/4 * (1 - 1/2) = 3/8 -> median 3
    assert kaplan_meier_median([1.0, 2.0, 3.0, 4.0], [True, False, True, False]) == 3.0
    # one of three reaches: S stays at 2/3, the median is not identified
    assert math.isnan(kaplan_meier_median([1.0, 5.0, 5.0], [True, False, False]))


def test_censored_rows_get_bounds_and_medians():
    from pathlib import Path

    from rlzoo.report import Row, Run, table_rows

    def run(row, seed, curve):
        return Run(Path("."), {"row": row, "seed": str(seed)}, "completed", final=curve[-1][1],
                   best=max(r for _, r in curve), kl=0.0, nfe=curve[-1][0], curve=curve)

    base = Row({"row": "base"}, [run("base", 0, [(100.0, 0.1), (200.0, 0.6)]),
                                 run("base", 1, [(100.0, 0.6), (200.0, 0.7)])])
    slow = Row({"row": "slow"}, [run("slow", 0, [(100.0, 0.1), (300.0, 0.2)]),
                                 run("slow", 1, [(100.0, 0.1), (250.0, 0.3)])])
    part = Row({"row": "part"}, [run("part", 0, [(100.0, 0.1), (300.0, 0.6)]),
                                 run("part", 1, [(100.0, 0.1), (400.0, 0.2)])])
    header, cells = table_rows(["row"], [base, slow, part], 0.5, {"row": "base"})
    to, reached, ratio = (header.index(h) for h in ("NFE to 0.5", "reached", "NFE ratio vs row=base"))
    # base: 180 (interpolated: 100 + 0.4/0.5 * 100) and 100 (its first evaluation is above)
    low, high = ratio_ci([180.0, 100.0], [180.0, 100.0])[1:]
    assert (cells[0][to], cells[0][reached]) == ("140 ± 508", "2/2")
    assert cells[0][ratio] == f"1.00 [{low:.2f}, {high:.2f}]"  # itself, as independent samples (t, 1 dof)
    # Neither seed reached 0.5: compute to it is above 250 (the smaller budget spent), so the
    # ratio to the baseline's mean of 140 is above 250 / 140.
    assert (cells[1][to], cells[1][reached], cells[1][ratio]) == ("> 250", "0/2", "> 1.79")
    # One of two reached (at 260): the mean is at least (260 + 400)/2 = 330; the Kaplan-Meier
    # median is 260; against the baseline's mean 140 and median 140.
    assert (cells[2][to], cells[2][reached]) == ("≥ 330 (KM median 260)", "1/2")
    assert cells[2][ratio] == "≥ 2.36 (KM medians 1.86)"


def test_report_puts_several_sweeps_in_one_table(tmp_path):
    """A longer run of one row lives in its own sweep; one table holds both, with a source
    column, and the baseline can come from either."""
    import shutil
    from pathlib import Path

    from rlzoo.report import report

    results = Path(__file__).resolve().parents[2] / "experiments" / "results" / "recipes_toy2d"
    for run in results.glob("experiment=*"):
        sweep = "long" if run.name.startswith("experiment=flowgrpo,") else "main"
        shutil.copytree(run, tmp_path / sweep / run.name)
    with pytest.raises(ConfigError, match="need --out"):
        report([tmp_path / "main", tmp_path / "long"])
    table = report([tmp_path / "main", tmp_path / "long"], baseline="source=main,experiment=paper_a",
                   out_dir=tmp_path / "both", plots=False)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| experiment | source | final |")
    assert "NFE ratio vs source=main,experiment=paper_a" in lines[0]
    ratio = lines[0].strip("| ").split(" | ").index("NFE ratio vs source=main,experiment=paper_a")
    cells = {tuple(line.strip("| ").split(" | ")[:2]): line.strip("| ").split(" | ") for line in lines[1:]}
    assert cells[("paper_a", "main")][ratio].startswith("1.00 [")  # the baseline against itself
    assert cells[("flowgrpo", "long")][ratio] != "-"  # a row of the other sweep gets its ratio


def test_metric_columns_and_the_base_row():
    """report.metrics: final values as mean ± 95% t over seeds, and a first row with the values
    at iteration 0 (the base model)."""
    from pathlib import Path

    from rlzoo.report import Row, Run, table_rows
    from rlzoo.stats import mean_ci

    def run(row, seed, fid_end):
        evals = [{"iteration": 0, "nfe_forward": 0, "nfe_backward": 0, "reward": 0.1, "fid_data": 1.0},
                 {"iteration": 9, "nfe_forward": 90, "nfe_backward": 10, "reward": 0.2, "fid_data": fid_end}]
        return Run(Path("."), {"row": row, "seed": str(seed)}, "completed", final=0.2, best=0.2, kl=0.0,
                   nfe=100.0, curve=[(0.0, 0.1), (100.0, 0.2)], evals=evals)

    a = Row({"row": "a"}, [run("a", 0, 0.5), run("a", 1, 0.7), run("a", 2, 0.6)])
    b = Row({"row": "b"}, [run("b", 0, 0.3), run("b", 1, 0.2), run("b", 2, 0.4)])
    header, cells = table_rows(["row"], [a, b], None, None, ["fid_data"])
    column = header.index("fid_data")
    assert header[:3] == ["row", "final", "fid_data"]
    assert cells[0][0] == "iteration 0 (base)" and cells[0][column] == "1.000 ± 0.000"
    mean, half, _ = mean_ci([0.5, 0.7, 0.6])
    assert cells[1][column] == f"{mean:.3f} ± {half:.3f}"
    assert cells[2][column].startswith("0.300 ± ")


def test_difference_ci_and_the_difference_columns():
    from pathlib import Path

    from rlzoo.report import Row, Run, table_rows
    from rlzoo.stats import difference_ci, t_quantile_975

    # a = 1, 2, 3 (s² = 1), b = 2, 4, 6 (s² = 4): Δ = −2, half = t_{0.975,2} · sqrt(1/3 + 4/3)
    delta, half = difference_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert delta == -2.0 and abs(half - t_quantile_975(2) * (5 / 3) ** 0.5) < 1e-12 and t_quantile_975(2) == 4.303

    def run(row, seed, fid):
        evals = [{"iteration": 0, "nfe_forward": 0, "nfe_backward": 0, "reward": 0.1, "fid_data": 9.0},
                 {"iteration": 5, "nfe_forward": 50, "nfe_backward": 0, "reward": 0.2, "fid_data": fid}]
        return Run(Path("."), {"row": row, "seed": str(seed)}, "completed", final=0.2, best=0.2, kl=0.0,
                   nfe=50.0, curve=[(0.0, 0.1), (50.0, 0.2)], evals=evals)

    a = Row({"row": "a"}, [run("a", s, v) for s, v in enumerate([1.0, 2.0, 3.0])])
    b = Row({"row": "b"}, [run("b", s, v) for s, v in enumerate([2.0, 4.0, 6.0])])
    header, cells = table_rows(["row"], [a, b], None, {"row": "a"}, ["fid_data"])
    column = header.index("Δfid_data vs row=a")
    assert cells[1][column] == "-"  # the baseline itself
    assert cells[2][column] == f"2.000 ± {half:.3f}"
    assert cells[0][column].startswith("7.000 ± ")  # iteration 0 (9.0) against the baseline's finals


def test_a_sweep_that_matches_nothing_is_refused():
    """(a glob that matched no component used to run 0 jobs and exit 0)"""
    from rlzoo.commands.sweeps import validate_sweep
    from rlzoo.config import ConfigError

    with pytest.raises(ConfigError, match="the sweep has no jobs"):
        validate_sweep(["task=toy2d", "objective=glob(zzz*)"])
