"""The fault suite, continued (README, Several GPUs): a rank that dies is named in one line, with
how it died and where its output is, and summary.json records it; the run then resumes."""
import json
import subprocess
from pathlib import Path

import pytest
from common import BIN, ENV, REPO, kill_a_rank_when, one_line, train_here


def test_a_killed_rank_is_one_line_naming_it_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    command = [str(BIN / "rlzoo-train"), "--nproc_per_node=2", "task=toy2d", "experiment=paper_a", "train.rng=keyed",
               "train.iterations=16", "eval.every=16", "eval.samples=64", "checkpoint_every=1", "progress_bar=false",
               "threads=1", "dist.timeout_s=60", f"run_dir={run_dir}"]
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_a_rank_when(run_dir, 3, process)
    out, err = process.communicate(timeout=180)
    line = one_line(err)  # (torchrun's own report, some forty lines, is not shown)
    assert process.returncode == 1 and line.startswith("rlzoo-train: error: rank 1 (pid ")
    assert "was killed by SIGKILL" in line and "out-of-memory" in line and "its output: " in line
    log = line.rsplit("its output: ", 1)[1]
    assert log.endswith("/attempt_0/1/stderr.log") and (run_dir / "ranks") in Path(log).parents
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == line.removeprefix("rlzoo-train: error: ")
    assert summary["failed_rank"] == {"rank": 1, "pid": summary["failed_rank"]["pid"], "exitcode": -9,
                                      "signal": "SIGKILL", "log": log}
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0 and "resuming" in rerun.stdout, rerun.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("argv, message", [
    (["--nproc_per_node=0", "task=toy2d"], "--nproc_per_node='0' must be a number of ranks >= 1"),
    (["--nproc_per_node", "two", "task=toy2d"], "--nproc_per_node='two' must be a number of ranks >= 1"),
    (["--nproc_per_node=2", "-m", "task=toy2d", "seed=0,1"], "--nproc_per_node starts the ranks of one run"),
    (["--nproc_per_node=2", "task=toy2d"], "train.rng=stream under torchrun with 2 processes"),
])
def test_bad_rank_settings_are_one_line_before_any_rank_starts(capsys, tmp_path, argv, message):
    out = train_here(capsys, *argv, f"run_dir={tmp_path / 'run'}")
    assert out.returncode == 2 and message in one_line(out.stderr)
    assert not (tmp_path / "run").exists()
