"""The fault suite, area 3: one owner per run directory (an OS lock; a killed owner leaves none).
Each case asserts its outcome (one line, the exit code) and that no file that existed before
changed (tests/README.md lists the areas)."""
import json
import signal
import subprocess

from common import BIN, ENV, REPO, TINY, cli, hold_lock, one_line, snapshot, train


def test_a_second_training_process_stops_in_one_line_and_touches_nothing(run, here):
    with hold_lock(run) as holder:
        before = snapshot(run)
        out = here(run, "train.iterations=5")
        line = one_line(out.stderr)
        assert out.returncode == 2 and "in use by process" in line and str(holder.pid) in line
        assert snapshot(run) == before


def test_evaluate_waits_for_no_one_while_a_run_trains(capsys, run):
    with hold_lock(run):
        before = snapshot(run)
        code, err = cli(capsys, "evaluate", f"run_dir={run}")
        assert code == 2 and "in use by process" in err and snapshot(run) == before


def test_a_killed_owner_leaves_no_lock_and_its_summary_does_not_say_running(run, here):
    from rlzoo.runs import read_summary, write_summary

    with hold_lock(run) as holder:
        write_summary(run, "running")
        assert read_summary(run)["status"] == "running"  # the owner is alive
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert read_summary(run)["status"] == "interrupted"
    out = here(run, "train.iterations=4")
    assert out.returncode == 0 and "resuming" in out.stdout, out.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["iterations"] == 4


def test_two_racing_training_processes_leave_one_clean_log(tmp_path):
    """The same command twice at once (a double-submitted job): one trains, the other stops."""
    run_dir = tmp_path / "run"
    first, second = (train(run_dir, "train.iterations=20", wait=False) for _ in range(2))
    results = sorted([(p.wait(timeout=300), p.stderr.read()) for p in (first, second)])
    assert [code for code, _ in results] == [0, 2], results
    assert "in use by" in one_line(results[1][1])
    iterations = [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert iterations == list(range(1, 21))


def test_a_second_copy_of_a_running_sweep_stops_in_one_line_and_touches_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    with hold_lock(sweep, ".rlzoo-sweep.lock") as holder:
        before = snapshot(sweep)
        out = subprocess.run([str(BIN / "rlzoo-train"), "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"],
                             capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
        line = one_line(out.stderr)
        assert out.returncode == 2 and "sweep directory" in line and str(holder.pid) in line
        assert snapshot(sweep) == before


def test_a_deleted_lock_file_lets_no_second_owner_in(run, here):
    """The lock is on the directory: removing .rlzoo.lock (it looks stale) changes nothing."""
    with hold_lock(run):
        (run / ".rlzoo.lock").unlink()
        out = here(run, "train.iterations=5")
        assert out.returncode == 2 and "in use by another process" in one_line(out.stderr)


def test_a_moved_run_directory_resumes_in_its_new_place(run, tmp_path, here):
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    run.rename(moved)
    out = here(moved, "train.iterations=4")
    assert out.returncode == 0 and "resuming" in out.stdout, out.stderr[-2000:]
    assert json.loads((moved / "summary.json").read_text())["status"] == "completed"
