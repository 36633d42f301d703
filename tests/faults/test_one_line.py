"""The fault suite, area 7: one line for every failure, with an exit code for its kind and the traceback in a log.
Each case asserts its outcome (one line, the exit code) and that no file that existed before
changed (tests/README.md lists the areas)."""
import json
import signal
from pathlib import Path

import pytest
from common import cli, one_line, train


def test_a_reward_that_crashes_is_one_line_with_its_traceback_in_error_txt(tmp_path, here):
    run_dir = tmp_path / "run"
    out = here(run_dir, "reward._target_=faulty_rewards.CrashingReward", "train.iterations=3")
    line = one_line(out.stderr)
    assert out.returncode == 1 and "RuntimeError: deliberate crash" in line and f"{run_dir}/error.txt" in line
    assert "Traceback" in (run_dir / "error.txt").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "deliberate crash" in summary["error"]


def test_a_non_finite_loss_is_one_line(tmp_path, here):
    out = here(tmp_path / "run", "reward._target_=faulty_rewards.NaNReward")
    assert out.returncode == 1 and "non-finite loss" in one_line(out.stderr)


# A folder no one can create a directory in, whoever runs the suite (root included).
UNWRITABLE = Path("/proc/rlzoo-fault-suite")


def test_an_os_error_names_the_path(here):
    out = here(UNWRITABLE / "run")
    line = one_line(out.stderr)
    assert out.returncode == 1 and str(UNWRITABLE) in line and "traceback in" in line


def test_a_file_where_a_folder_must_be_is_bad_input(tmp_path, here):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = here(blocker / "run")
    line = one_line(out.stderr)
    assert out.returncode == 2 and f"{blocker} is not a directory" in line


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 KiB fail (EFBIG) as a full disk would (ENOSPC):
    the first checkpoint is larger, so the run stops there, in one line naming it."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    run_dir = tmp_path / "run"
    out = train(run_dir, preexec_fn=limit)
    line = one_line(out.stderr)
    assert out.returncode == 1 and "File too large" in line and "last.pt" in line
    assert not list(run_dir.rglob("*.tmp"))  # the failed write left no temporary file


def test_rlzoo_traceback_prints_the_whole_traceback(here, monkeypatch):
    monkeypatch.setenv("RLZOO_TRACEBACK", "1")
    out = here(UNWRITABLE / "run")
    assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr


@pytest.mark.parametrize("argv, message", [
    (["report", "/nonexistent/sweep"], "no run directories under /nonexistent/sweep"),
    (["export", "run_dir=x"], "usage: rlzoo export"),
    (["export", "run_dir=x", "--out", "y", "--force"], "unknown option --force"),
    (["evaluate", "run_dir=/nonexistent"], "is not a directory"),
    (["evaluate", "--force"], "unknown option --force"),
    (["prompts", "--out", "x"], "usage: rlzoo prompts"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_every_command_fails_in_one_line_with_exit_code_2_for_bad_input(capsys, argv, message):
    code, err = cli(capsys, *argv)
    assert code == 2 and message in err, err


def test_an_os_error_in_a_command_is_one_line_with_exit_code_1(capsys):
    code, err = cli(capsys, "prompts", "prompts=geneval", "prompts.per_family=2", "--out", str(UNWRITABLE / "out"))
    assert code == 1 and str(UNWRITABLE) in err and "traceback in" in err
