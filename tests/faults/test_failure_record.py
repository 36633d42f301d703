"""The fault suite, area 4: a failure never rewrites the record (foreign checkpoints, damaged logs, failed starts, signals).
Each case asserts its outcome (one line, the exit code) and that no file that existed before
changed (tests/README.md lists the areas)."""
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from common import kept, one_line, snapshot, train, user_dir, wait_for_iterations


def test_a_checkpoint_of_another_run_changes_nothing(tmp_path, here):
    """A completed run whose checkpoint was replaced by another run's (another seed): the resume
    stops in one line before anything (summary, logs, .hydra/ record, checkpoint) is touched."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    assert here(mine, "train.iterations=1").returncode == 0
    assert here(other, "seed=1", "train.iterations=1").returncode == 0
    shutil.copyfile(other / "checkpoints" / "last.pt", mine / "checkpoints" / "last.pt")
    before = snapshot(mine)
    out = here(mine, "train.iterations=5", "eval.every=5")
    line = one_line(out.stderr)
    assert out.returncode == 2 and "another config" in line and "seed" in line
    assert snapshot(mine) == before and (mine / ".hydra" / "overrides.yaml").exists()


def test_a_checkpoint_that_does_not_fit_the_model_changes_nothing(run, here):
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del state["run"]  # (as an old checkpoint) so the model itself must refuse it
    state["policy"]["current"] = {"net.0.weight": torch.zeros(3, 3)}
    torch.save(state, run / "checkpoints" / "last.pt")
    before = snapshot(run)
    out = here(run, "train.iterations=5")
    line = one_line(out.stderr)
    assert out.returncode == 2 and "does not fit this run" in line and "last.pt" in line
    assert kept(before, snapshot(run), allow=(".rlzoo.lock",))
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("log", ["metrics.jsonl", "eval.jsonl"])
def test_a_damaged_line_in_the_middle_of_a_log_is_kept_aside_on_resume(run, log, here):
    path = run / log
    lines = path.read_text().splitlines()
    lines.insert(1, '{"iteration": 1, "reward/rew')  # a damaged block in the middle
    path.write_text("\n".join(lines) + "\n")
    damaged = path.read_bytes()
    out = here(run, "train.iterations=4")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (run / f"{log}.damaged-1").read_bytes() == damaged and f"{log}.damaged-1" in out.stdout
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == len(lines)  # the damaged line out (kept aside), iteration 4's record in


def test_the_report_names_a_damaged_line_and_keeps_the_rest(capsys, tmp_path):
    from rlzoo.runs import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iterat\n{"iteration": 3}\n')
    assert [r["iteration"] for r in read_jsonl(path)] == [1, 3]
    assert f"{path}: line 2 not JSON" in capsys.readouterr().err


def test_a_failed_start_does_not_claim_the_directory(tmp_path, here):
    run_dir = tmp_path / "run"
    failed = here(run_dir, "+logger._target_=crashing_logger.CrashingLogger", "optimizer.lr=1e-3")
    line = one_line(failed.stderr)
    assert failed.returncode == 1 and "deliberate failure" in line and "error.txt" in line
    assert not (run_dir / "config.yaml").exists()
    corrected = here(run_dir, "optimizer.lr=2e-3")
    assert corrected.returncode == 0, corrected.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    aside = run_dir / "failed_starts" / "1"
    assert json.loads((aside / "summary.json").read_text())["status"] == "failed"
    assert "deliberate failure" in (aside / "error.txt").read_text()
    assert [json.loads(x)["iteration"] for x in (run_dir / "eval.jsonl").read_text().splitlines()] == [0, 2]


def interrupt(run_dir: Path, signum: int, *overrides):
    proc = train(run_dir, "train.iterations=100000", "checkpoint_every=3", *overrides, wait=False)
    wait_for_iterations(run_dir, 4)
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # (a run that does not stop: fail with what it said, not a bare timeout)
        proc.kill()
        out, err = proc.communicate()
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
        pytest.fail(f"still running 60 s after signal {signum} (iterations logged: {len(lines)}); "
                    f"stderr: {err[-1500:]!r}; stdout: {out[-500:]!r}")
    return proc.returncode, stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_says_so_and_resumes(tmp_path, signum, code, here):
    run_dir = tmp_path / "run"
    returncode, stderr = interrupt(run_dir, signum)
    line = one_line(stderr)
    assert returncode == code and f"interrupted by {signal.Signals(signum).name}" in line and "resume" in line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["iterations"] >= 4
    total = summary["iterations"] + 4  # (a loaded machine may run a few more before the signal lands)
    resumed = here(run_dir, f"train.iterations={total}", "checkpoint_every=3")
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-2000:]
    iterations = [json.loads(x)["iteration"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert iterations == list(range(1, total + 1))


def test_leftover_temporary_files_are_removed_and_nothing_else(run, here):
    leftovers = [run / ".summary.json.k3j2l1ab.tmp", run / "checkpoints" / ".last.pt.a8s7d6x_.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a write")
    mine = [run / "notes.tmp", run / ".notes.v1.tmp", run / "analysis" / ".cache.part1234.tmp"]
    (run / "analysis").mkdir()
    for path in mine:  # the user's: not rlzoo's pattern, or not in a folder rlzoo writes
        path.write_text("the user's")
    out = here(run, "train.iterations=4")
    assert out.returncode == 0, out.stderr[-2000:]
    assert not any(p.exists() for p in leftovers) and all(p.read_text() == "the user's" for p in mine)


@pytest.mark.parametrize("make", ["a user's folder", "the current directory", "inside a run"])
def test_a_run_dir_that_is_not_a_run_is_refused(tmp_path, here, run, make, monkeypatch):
    if make == "a user's folder":
        run_dir = user_dir(tmp_path, "config.yaml", ".notes.v1.tmp")
    elif make == "the current directory":
        monkeypatch.chdir(user_dir(tmp_path, "paper.tex"))
        run_dir = ""
    else:
        run_dir = run / "nested"
    watched = tmp_path if make != "inside a run" else run
    before = snapshot(watched)
    out = here(run_dir)
    line = one_line(out.stderr)
    assert out.returncode == 2 and ("holds no rlzoo run" in line or "inside the run directory" in line), line
    assert snapshot(watched) == before


def test_a_completed_run_without_its_checkpoint_is_kept(run, here):
    """Checkpoints deleted to save space: the same command says it is done; another config or a
    larger budget is refused (it cannot be continued), never started over the record."""
    shutil.rmtree(run / "checkpoints")
    before = snapshot(run)
    done = here(run, "train.iterations=3")
    assert done.returncode == 0 and "already completed" in done.stdout
    for overrides, message in ((["seed=9"], "different config"), (["train.iterations=6"], "cannot be continued")):
        out = here(run, *overrides)
        assert out.returncode == 2 and message in one_line(out.stderr)
    assert kept(before, snapshot(run), allow=(".rlzoo.lock",))
