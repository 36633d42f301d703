"""The fault suite (README, Reliability): bad input and faults in seven areas, each case asserting
its outcome (one line, the exit code) and that no file that existed before changed.

1. commands never delete or replace what rlzoo did not write (export, report, prompts, evaluate)
2. a run directory's files are data, never code (`_target_` in config.yaml, config.json)
3. one owner per run directory (an OS lock; a killed owner leaves none)
4. a failure never rewrites the record (foreign checkpoints, damaged logs, failed starts, signals)
5. remote rewards are bounded (client deadline, response cap, retries; the reference server's limits)
6. every number is validated for its meaning, not only its type
7. one line for every failure, with an exit code for its kind and the traceback in a log
"""
import base64
import io
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch
from common import BIN, ENV, HELPERS, REPO, TINY, cli, hold_lock, kept, one_line, snapshot, train

pytestmark = pytest.mark.faults


# ------------------------------------------------------------------ 1. never delete what rlzoo did not write
def user_dir(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    for name in names:
        (d / name).write_text(f"the user's own {name}\n")
    return d


def test_export_refuses_a_non_empty_user_directory(capsys, run, tmp_path):
    out = user_dir(tmp_path, "notes.txt", "model.safetensors")
    before = snapshot(tmp_path)
    code, err = cli(capsys, "export", f"run_dir={run}", "--out", str(out))
    assert code == 2 and "not empty" in err and "--overwrite" in err and str(out) in err
    assert snapshot(tmp_path) == before


def test_export_leaves_sibling_old_and_tmp_directories_alone(capsys, run, tmp_path):
    """The old LoRA saver removed <out>.old and <out>.tmp: both belong to the user here."""
    for name in ("exported.old", "exported.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "precious.txt").write_text("keep me")
    before = snapshot(tmp_path)
    code, _ = cli(capsys, "export", f"run_dir={run}", "--out", str(tmp_path / "exported"))
    assert code == 0
    after = snapshot(tmp_path)
    assert kept(before, after) and (tmp_path / "exported" / "model.safetensors").exists()


@pytest.mark.parametrize("inside", [".", "checkpoints", "lora", "samples/new", "export"])
def test_export_refuses_any_output_inside_a_run_directory(capsys, run, inside):
    before = snapshot(run)
    code, err = cli(capsys, "export", f"run_dir={run}", "--out", str(run / inside), "--overwrite")
    assert code == 2 and "inside the run directory" in err
    assert snapshot(run) == before and (inside in (".", "checkpoints") or not (run / inside).exists())


def test_export_refuses_a_file_as_output(capsys, run, tmp_path):
    target = tmp_path / "model.bin"
    target.write_text("mine")
    code, err = cli(capsys, "export", f"run_dir={run}", "--out", str(target))
    assert code == 2 and "is a file" in err and target.read_text() == "mine"


def test_export_reexports_its_own_directory_but_not_an_edited_file(capsys, run, tmp_path):
    out = tmp_path / "exported"
    assert cli(capsys, "export", f"run_dir={run}", "--out", str(out))[0] == 0
    assert cli(capsys, "export", f"run_dir={run}", "--out", str(out), "weights=current")[0] == 0  # its own files
    (out / "config.json").write_text('{"edited": "by the user"}')
    (out / "README.md").write_text("the user's note")
    code, err = cli(capsys, "export", f"run_dir={run}", "--out", str(out))
    assert code == 2 and "config.json" in err and "--overwrite" in err
    assert json.loads((out / "config.json").read_text()) == {"edited": "by the user"}


def test_export_overwrite_replaces_only_its_own_files(capsys, run, tmp_path):
    out = user_dir(tmp_path, "notes.txt", "config.json")
    code, _ = cli(capsys, "export", f"run_dir={run}", "--out", str(out), "--overwrite")
    assert code == 0
    assert (out / "notes.txt").read_text() == "the user's own notes.txt\n"
    assert json.loads((out / "config.json").read_text())["task"] == "toy2d"
    assert sorted(p.name for p in out.iterdir()) == [".rlzoo-files.json", "config.json", "model.safetensors",
                                                     "notes.txt"]


def test_the_lora_saver_replaces_only_its_own_files(tmp_path):
    """A run's lora/ is rewritten at every checkpoint: file by file, never by removing the folder."""
    from rlzoo.policies import LORA_WEIGHTS, LoraSettings, save_lora

    out = tmp_path / "lora"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    (tmp_path / "lora.old").mkdir()
    state = {"transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(2, 4),
             "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(4, 2)}
    save_lora(state, LoraSettings(rank=2, alpha=2.0, target_modules=["attn.to_q"]), out, {"iteration": 1})
    save_lora(state, LoraSettings(rank=2, alpha=2.0, target_modules=["attn.to_q"]), out, {"iteration": 2})
    assert (out / "mine.txt").read_text() == "keep" and (tmp_path / "lora.old").is_dir()
    assert (out / LORA_WEIGHTS).stat().st_size > 0 and json.loads((out / "rlzoo.json").read_text())["iteration"] == 2


def test_no_code_path_removes_a_directory_tree():
    """`rmtree` appears nowhere in the package: no command can delete a folder it did not make."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "rlzoo").rglob("*.py") if "rmtree" in p.read_text()]
    assert offenders == []


def sweep_copy(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    shutil.copytree(REPO / "experiments" / "results" / "toy2d_default", root,
                    ignore=shutil.ignore_patterns("report"))
    return root


def test_report_refuses_a_non_empty_user_directory(capsys, tmp_path):
    root, out = sweep_copy(tmp_path), user_dir(tmp_path, "table.md", "curves.png")
    before = snapshot(out)
    code, err = cli(capsys, "report", str(root), "--out", str(out), "--no-plots")
    assert code == 2 and "not empty" in err and snapshot(out) == before


def test_report_refuses_an_output_inside_a_run(capsys, tmp_path, run):
    root = sweep_copy(tmp_path)
    before = snapshot(run)
    code, err = cli(capsys, "report", str(root), "--out", str(run / "tables"), "--no-plots")
    assert code == 2 and "inside the run directory" in err and snapshot(run) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_report_export_writes_nothing_through_a_link_into_a_run(capsys, tmp_path, run, overwrite):
    """A folder of the export that links to a run directory: no file is created or replaced in it."""
    root, dest = sweep_copy(tmp_path), tmp_path / "exported"
    dest.mkdir()
    (dest / "seed=0").symlink_to(run)
    before = snapshot(run)
    code, err = cli(capsys, "report", str(root), "--export", str(dest), "--no-plots", *overwrite)
    assert code == 2 and ("is a link" in err if overwrite else "not empty" in err) and snapshot(run) == before


@pytest.mark.parametrize("out, message", [
    ("--overwrite", "looks like an option"),
    ("a_file/sub", "is a file"),
])
def test_an_output_path_that_cannot_be_a_folder_is_bad_input(capsys, run, tmp_path, out, message):
    (tmp_path / "a_file").write_text("x")
    code, err = cli(capsys, "export", f"run_dir={run}", "--out", str(tmp_path / out) if "/" in out else out)
    assert code == 2 and message in err


def test_report_rerenders_into_its_own_directory(capsys, tmp_path):
    root = sweep_copy(tmp_path)
    assert cli(capsys, "report", str(root), "--no-plots")[0] == 0
    first = snapshot(root / "report")
    assert cli(capsys, "report", str(root), "--no-plots")[0] == 0
    assert snapshot(root / "report") == first


def test_report_export_refuses_a_non_empty_user_directory(capsys, tmp_path):
    root, out = sweep_copy(tmp_path), user_dir(tmp_path, "summary.json")
    before = snapshot(out)
    code, err = cli(capsys, "report", str(root), "--export", str(out), "--no-plots")
    assert code == 2 and snapshot(out) == before


def test_prompts_refuse_a_non_empty_user_directory_and_rewrite_their_own(capsys, tmp_path):
    out = user_dir(tmp_path, "train.txt")
    before = snapshot(out)
    code, err = cli(capsys, "prompts", "prompts=geneval", "prompts.per_family=3", "--out", str(out))
    assert code == 2 and snapshot(out) == before
    fresh = tmp_path / "prompts"
    assert cli(capsys, "prompts", "prompts=geneval", "prompts.per_family=3", "--out", str(fresh))[0] == 0
    assert cli(capsys, "prompts", "prompts=geneval", "prompts.per_family=4", "--out", str(fresh))[0] == 0


@pytest.mark.parametrize("link", [False, True])
def test_evaluate_refuses_to_replace_a_grid_file(capsys, tmp_path, link):
    picture = tmp_path / "picture.png"
    picture.write_bytes(b"the user's picture")
    grid = tmp_path / "grid.png"
    if link:
        grid.symlink_to(tmp_path / "elsewhere.png")  # dangling: exists() is False
    else:
        grid = picture
    code, err = cli(capsys, "evaluate", "task=toy2d", "debug=tiny", f"grid={grid}")
    assert code == 2 and "exists" in err and "--overwrite" in err and picture.read_bytes() == b"the user's picture"
    assert grid.is_symlink() == link


@pytest.mark.parametrize("folder", ["evaluations", "samples", "checkpoints"])
def test_a_link_inside_a_run_directory_is_refused(capsys, run, tmp_path, here, folder):
    """A shared or downloaded run whose folder links elsewhere: nothing is written through it."""
    victim = tmp_path / "victim"
    shutil.move(str(run / folder), victim) if (run / folder).exists() else victim.mkdir()
    (victim / "ema.json").write_text("the user's")
    (run / folder).symlink_to(victim)
    before = snapshot(victim)
    if folder == "evaluations":
        code, err = cli(capsys, "evaluate", f"run_dir={run}")
    else:
        out = here(run, "train.iterations=4")
        code, err = out.returncode, one_line(out.stderr)
    assert code == 2 and "refuses links inside a run directory" in err and snapshot(victim) == before


# ---------------------------------------------------------------- 2. a run directory's files are data, not code
def craft(run: Path, victim: Path, where: str) -> None:
    """Point a `_target_` of the run's config.yaml at builtins.open(victim, "w"), which truncates it."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    OmegaConf.update(cfg, where, {"_target_": "builtins.open", "file": str(victim), "mode": "w"}, merge=False)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


@pytest.mark.parametrize("where", ["task", "model", "reward", "sampler", "critic", "logger",
                                   "task.eval_rewards.extra", "reward.rewards.0"])
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_harmful_target_in_a_run_directory_never_runs(capsys, run, tmp_path, where, command):
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive")
    craft(run, victim, where)
    before = snapshot(run)
    argv = ["evaluate", f"run_dir={run}"] if command == "evaluate" else \
        ["export", f"run_dir={run}", "--out", str(tmp_path / "out")]
    code, err = cli(capsys, *argv)
    assert code == 2 and "builtins.open" in err and "not one of rlzoo's components" in err
    assert victim.read_text() == "must survive" and snapshot(run) == before
    assert not (tmp_path / "out").exists()


def test_an_interpolation_in_a_run_config_is_refused(capsys, run):
    text = (run / "config.yaml").read_text().replace("name: toy2d", "name: ${oc.env:HOME}", 1)
    (run / "config.yaml").write_text(text)
    code, err = cli(capsys, "evaluate", f"run_dir={run}")
    assert code == 2 and "interpolation" in err


def test_a_user_named_target_on_the_command_line_is_trusted(capsys, run):
    """The user's own component, named by the user (not by the run's files), may run."""
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("_target_: rlzoo.rewards.VerifierReward",
                                                  "_target_: faulty_rewards.NaNReward"))
    code, err = cli(capsys, "evaluate", f"run_dir={run}")
    assert code == 2 and "faulty_rewards.NaNReward" in err
    sys.path.insert(0, str(HELPERS))
    try:
        code, _ = cli(capsys, "evaluate", f"run_dir={run}", "reward._target_=faulty_rewards.NaNReward",
                      "eval.samples=24")
    finally:
        sys.path.remove(str(HELPERS))
    assert code == 0


@pytest.mark.parametrize("content, message", [
    ("{not: [yaml", "is not YAML"),
    ("- a list\n- not a config\n", "not a config"),
])
def test_a_damaged_run_config_is_one_line(capsys, run, content, message):
    (run / "config.yaml").write_text(content)
    before = snapshot(run)
    code, err = cli(capsys, "evaluate", f"run_dir={run}")
    assert code == 2 and message in err and snapshot(run) == before


@pytest.mark.parametrize("override, message", [
    ("eval.sampels=10", "unknown key 'eval.sampels'"),
    ("+eval.extra=1", "must be key=value for a key the run's config has"),
    ("weights=best", "unknown weights='best'"),
])
def test_evaluate_refuses_unknown_keys(capsys, run, override, message):
    before = snapshot(run)
    code, err = cli(capsys, "evaluate", f"run_dir={run}", override)
    assert code == 2 and message in err and snapshot(run) == before


def test_evaluate_validates_the_values_it_is_given(capsys, run):
    code, err = cli(capsys, "evaluate", f"run_dir={run}", "eval.samples=0")
    assert code == 2 and "eval.samples must be an int >= 1" in err


def test_an_exported_config_json_is_checked_before_it_builds(run, tmp_path, capsys):
    from rlzoo.commands.export import load_model
    from rlzoo.config import ConfigError

    out = tmp_path / "exported"
    assert cli(capsys, "export", f"run_dir={run}", "--out", str(out))[0] == 0
    model = load_model(out)
    assert sum(p.numel() for p in model.parameters()) > 0
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive")
    config = json.loads((out / "config.json").read_text())
    config["model"] = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="not one of rlzoo's components"):
        load_model(out)
    assert victim.read_text() == "must survive"


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "is not a directory"),
    (lambda d: d.mkdir(), "holds no run"),
])
def test_evaluate_names_what_a_run_directory_lacks(capsys, tmp_path, make, message):
    target = tmp_path / "nothing"
    make(target)
    code, err = cli(capsys, "evaluate", f"run_dir={target}")
    assert code == 2 and message in err


# --------------------------------------------------------------------------- 3. one owner per run directory
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


# ------------------------------------------------------------------------ 4. a failure never rewrites the record
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
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
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


# ------------------------------------------------------------------------------ 5. bounded remote rewards
def handler(answer, calls: list | None = None):
    """A handler that reads the request and runs `answer(self)`."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if calls is not None:
                calls.append(1)
            try:
                answer(self)
            except OSError:
                pass

        def log_message(self, *args):
            pass
    return Handler


def reply(status: int, body: bytes, length: int | None = None):
    def answer(h):
        h.send_response(status)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)
    return answer


def score(url, **kwargs):
    from rlzoo.rewards.remote import RemoteReward

    return RemoteReward(url=url, **{"timeout": 0.5, "retries": 1, "backoff": 0.01, **kwargs}).score(
        torch.rand(2, 3, 4, 4), ["a", "b"])


def test_a_trickling_server_is_cut_off_at_the_request_deadline(server):
    from rlzoo.rewards.remote import RemoteRewardError

    def trickle(h):
        body = json.dumps({"scores": [0.5, 0.5]}).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for byte in body:  # each read gets a byte well within any per-read timeout
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.1)

    url = server(handler=handler(trickle))
    start = time.perf_counter()
    with pytest.raises(RemoteRewardError, match="within 0.5s") as info:
        score(url)
    assert time.perf_counter() - start < 2.0 and url in str(info.value)  # 2 tries x 0.5 s, not 25 x 0.1 s each


def test_a_connection_dropped_mid_answer_names_the_url_and_is_retried(server):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []

    def drop(h):
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        h.wfile.write(b'{"scores": [0.')
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)

    url = server(handler=handler(drop, calls))
    with pytest.raises(RemoteRewardError, match="dropped mid-answer") as info:
        score(url, retries=2)
    assert url in str(info.value) and len(calls) == 3


@pytest.mark.parametrize("declared", [True, False])
def test_an_oversized_answer_is_refused_not_read(server, declared):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []

    def big(h):
        h.send_response(200)
        if declared:
            h.send_header("Content-Length", str(10**9))
        h.end_headers()
        h.wfile.write(b"x" * 50_000)

    url = server(handler=handler(big, calls))
    with pytest.raises(RemoteRewardError, match="max_response_bytes") as info:
        score(url, max_response_bytes=10_000, retries=3)
    assert url in str(info.value) and len(calls) == 1


@pytest.mark.parametrize("body, message", [
    (b'{"scores": [0.5, 0.5], "info": {"x": 5}}', "'info' must map names to lists of 2 finite numbers"),
    (b'{"scores": [0.5, 0.5], "info": {"x": ["a", "b"]}}', "'info' must map names"),
    (b'{"scores": [0.5, 1' + b"0" * 400 + b']}', "without 2 finite 'scores'"),
    (b"[" * 100_000, "not JSON"),
])
def test_a_malformed_answer_is_one_error_naming_the_url(server, body, message):
    from rlzoo.rewards.remote import RemoteRewardError

    url = server(handler=handler(reply(200, body)))
    with pytest.raises(RemoteRewardError, match=message) as info:
        score(url)
    assert url in str(info.value)


def test_a_redirect_is_not_followed(server):
    from rlzoo.rewards.remote import RemoteRewardError

    def redirect(h):
        h.send_response(302)
        h.send_header("Location", "http://example.com/")
        h.send_header("Content-Length", "0")
        h.end_headers()

    with pytest.raises(RemoteRewardError, match="HTTP 302.*redirect"):
        score(server(handler=handler(redirect)))


def test_a_server_that_trickles_its_headers_is_cut_off_too(server):
    from rlzoo.rewards.remote import RemoteRewardError

    def slow_headers(h):
        for line in (b"HTTP/1.0 200 OK\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n", b"X-C: 3\r\n", b"\r\n{}"):
            h.wfile.write(line)
            h.wfile.flush()
            time.sleep(0.3)

    start = time.perf_counter()
    with pytest.raises(RemoteRewardError, match="within 0.5s"):
        score(server(handler=handler(slow_headers)))
    assert time.perf_counter() - start < 2.0


def test_a_4xx_is_not_retried_and_carries_the_server_reason(server):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []
    url = server(handler=handler(reply(413, json.dumps({"error": "the body is too large"}).encode()), calls))
    with pytest.raises(RemoteRewardError, match="HTTP 413.*the body is too large"):
        score(url, retries=3)
    assert len(calls) == 1


def test_a_429_is_retried_with_backoff(server):
    from rlzoo.rewards.remote import RemoteRewardError

    calls = []
    url = server(handler=handler(reply(429, b"{}"), calls))
    with pytest.raises(RemoteRewardError, match="failed after 3 tries: HTTP 429"):
        score(url, retries=2)
    assert len(calls) == 3


def test_a_server_that_recovers_is_used(server):
    calls = []

    def flaky(h):
        if len(calls) <= 2:
            h.connection.shutdown(socket.SHUT_RDWR)  # reset before any answer
            return
        reply(200, json.dumps({"scores": [0.25, 0.75]}).encode())(h)

    url = server(handler=handler(flaky, calls))
    assert score(url, retries=2).tolist() == [0.25, 0.75] and len(calls) == 3


@pytest.mark.parametrize("override, message", [
    ("reward.timeout=inf", "reward.timeout=inf is not a finite number"),
    ("reward.timeout=0", "reward.timeout must be a finite number > 0"),
    ("reward.backoff=-1", "reward.backoff must be a finite number >= 0"),
    ("reward.max_response_bytes=0", "reward.max_response_bytes must be an int >= 1"),
    ("reward.url=ftp://x/", "is not an http(s) URL"),
])
def test_remote_reward_settings_are_validated(override, message):
    from rlzoo.config import ConfigError, compose_config, validate

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_config(["task=t2i", "model=sd3_tiny", "reward=remote", "reward.url=http://127.0.0.1:1/",
                                 "debug=tiny", override]), check_model=False)


@pytest.fixture
def reference():
    """The reference reward server with small limits, on a free port: (port, scorer calls)."""
    from rlzoo.rewards.server import Limits, serve

    calls = []

    def scorer(images, prompts, metadata):
        calls.append(len(images))
        if prompts and prompts[0] == "explode":
            raise RuntimeError("secret internal detail")
        if prompts and prompts[0] == "slow":
            time.sleep(0.3)
        return [1.0] * len(images)

    server = serve(scorer, port=0, limits=Limits(max_body_bytes=200_000, max_pixels=64 * 64,
                                                 max_request_pixels=3 * 64 * 64, timeout=0.5, workers=1))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1], calls
    server.shutdown()
    server.server_close()


def raw_request(port: int, data: bytes) -> tuple[bytes, float]:
    """Send raw bytes; (the whole answer, seconds until the server answered or closed)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.perf_counter() - start


def post(body: bytes, length: int | None = None) -> bytes:
    return b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (len(body) if length is None else length) + body


def png(width: int, height: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def bomb_png(side: int) -> str:
    """A PNG whose header says side x side pixels, with a tiny payload: decoding it would take
    3·side² bytes (12000²: 432 MB), checking its header takes nothing."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    raw += chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + raw).decode()


def test_the_server_refuses_an_oversized_body_without_reading_it(reference):
    port, calls = reference
    answer, seconds = raw_request(port, post(b"", length=10**9))
    assert answer.startswith(b"HTTP/1.0 413") and b"limit of 200,000" in answer and calls == []


@pytest.mark.parametrize("side", [12000, 20000])  # 20000²: beyond Pillow's own refusal too
def test_the_server_refuses_a_decompression_bomb_from_its_header(reference, side):
    port, calls = reference
    body = json.dumps({"prompts": ["a"], "images": [bomb_png(side)]}).encode()
    answer, seconds = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 413") and b"pixels" in answer and calls == [] and seconds < 2


def test_the_server_refuses_a_request_over_its_total_pixel_limit(reference):
    """Many small files that each pass, but decode to too much together."""
    port, calls = reference
    body = json.dumps({"prompts": ["a"] * 4, "images": [png(60, 60)] * 4}).encode()
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 413") and b"in all" in answer and calls == []


def test_the_server_refuses_a_json_nesting_bomb(reference):
    port, calls = reference
    answer, _ = raw_request(port, post(b"[" * 100_000))
    assert answer.startswith(b"HTTP/1.0 400") and calls == []


def test_the_server_refuses_an_image_over_its_pixel_limit(reference):
    port, calls = reference
    body = json.dumps({"prompts": ["a"], "images": [png(65, 65)]}).encode()
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 413") and b"65x65" in answer and calls == []


@pytest.mark.parametrize("data", [
    b"",                                                    # connects and says nothing
    b"POST / HTTP/1.1\r\nContent-Le",                       # half-sent headers
    b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pr",  # half-sent body
])
def test_the_server_closes_idle_and_half_sent_connections(reference, data):
    port, calls = reference
    answer, seconds = raw_request(port, data)
    assert answer == b"" and 0.3 < seconds < 3 and calls == []


@pytest.mark.parametrize("body, status, message", [
    (b"not json", 400, b"not JSON"),
    (json.dumps({"prompts": "a", "images": []}).encode(), 400, b"'prompts' must be a list"),
    (json.dumps({"prompts": ["a"], "images": []}).encode(), 400, b"one image per prompt"),
    (json.dumps({"prompts": ["a"], "images": ["%%%"]}).encode(), 400, b"not a base64-encoded image"),
    (json.dumps({"prompts": ["a"], "images": [png(4, 4)], "metadata": [1]}).encode(), 400, b"'metadata' must be"),
])
def test_the_server_answers_a_bad_request_with_a_4xx_that_says_why(reference, body, status, message):
    port, calls = reference
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 %d" % status) and message in answer and calls == []
    assert b"Traceback" not in answer and b"File \"" not in answer


def test_the_server_requires_a_content_length(reference):
    port, _ = reference
    answer, _ = raw_request(port, b"POST / HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 411")


def test_a_failing_scorer_is_a_500_that_does_not_echo_internals(reference):
    port, calls = reference
    body = json.dumps({"prompts": ["explode"], "images": [png(4, 4)]}).encode()
    answer, _ = raw_request(port, post(body))
    assert answer.startswith(b"HTTP/1.0 500") and b"secret internal detail" not in answer and calls == [1]


def test_the_server_handles_at_most_its_workers_at_once(reference):
    port, calls = reference
    body = json.dumps({"prompts": ["slow"], "images": [png(4, 4)]}).encode()
    answers = []

    def client():
        answers.append(raw_request(port, post(body))[0])

    threads = [threading.Thread(target=client) for _ in range(3)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.startswith(b"HTTP/1.0 200") for a in answers) and len(calls) == 3
    assert time.perf_counter() - start >= 0.9  # three 0.3 s scorings, one at a time (workers=1)


@pytest.mark.parametrize("argv, code, message", [
    (["--workers", "0"], 2, "--workers must be a finite number > 0"),
    (["--workers", "many"], 2, "invalid int value: 'many'"),
    (["--port", "99999"], 2, "--port must be in 0..65535"),
    (["--scorer", "nowhere_module:score"], 2, "cannot be imported"),
    (["--scorer", "rlzoo.rewards.server:nothing"], 2, "has no 'nothing'"),
])
def test_the_server_command_fails_in_one_line(capsys, argv, code, message):
    from rlzoo.rewards.server import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code and message in one_line(capsys.readouterr().err)


def test_the_server_command_names_a_taken_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "rlzoo.rewards.server", "--port", str(port)],
                             capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in one_line(out.stderr)


# -------------------------------------------------------------------- 6. every number means what its name says
@pytest.mark.parametrize("overrides, message", [
    (["train.group_size=1", "train.batch_size=8"], "train.group_size=1 gives every sample a zero advantage"),
    (["train.group_size=1", "train.batch_size=8", "advantage=group"], "use train.group_size>=2 or advantage=global_std"),
    (["kl.beta=-0.1"], "kl.beta must be a finite number >= 0 (0 turns the KL off), got -0.1"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not a finite number"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is not a finite number"),
    (["train.max_grad_norm=nan"], "train.max_grad_norm=nan is not a finite number"),
    (["train.max_minutes=inf"], "train.max_minutes=inf is not a finite number"),
    (["train.iterations=2.5"], "train.iterations must be an int >= 1, got 2.5"),
    (["train.old_policy_schedule=1.7"], "train.old_policy_schedule=1.7; valid: 0, 1, 2"),
    (["eval.ema_cap=1.5"], "eval.ema_cap must be a finite number in [0, 1)"),
    (["eval.ema_cap=-0.1"], "eval.ema_cap must be a finite number in [0, 1)"),
    (["eval.teacher_steps=-3"], "eval.teacher_steps must be an int >= 1"),
    (["seed=1.5"], "seed must be an int in [-9223372036854775808, 9223372036854775807], got 1.5"),
    (["seed=1180591620717411303424"], "seed must be an int in"),
    (["eval.samples=12.0"], "eval.samples must be an int >= 1, got 12.0"),
    (["eval.seed=0.5"], "eval.seed must be an int"),
    (["reward_temperature=0"], "advantage.alpha must be a finite number > 0"),
    (["estimator.num_terms=0"], "estimator.num_terms must be an int >= 1"),
    (["estimator.num_terms=50"], "estimator.num_terms=50 is more than the sampler's"),
    (["estimator.noise_draws=0"], "estimator.noise_draws must be an int >= 1"),
    (["estimator=trajectory", "sampler=flow_sde", "kl=sde_mean", "estimator.timestep_fraction=0.01"],
     "trains no step"),
    (["sampler.shift=-1"], "sampler.shift must be a finite number > 0"),
    (["sampler=flow_sde", "estimator=trajectory", "sampler.eta=0"], "sampler.eta must be a finite number > 0"),
    (["sampler=cps", "estimator=trajectory", "sampler.eta=1.5"], "sampler.eta must be a finite number in (0, 1]"),
    (["objective=grpo", "objective.clip_range=-1"], "objective.clip_range must be a finite number > 0"),
    (["objective=grpo", "objective.adv_clip=0"], "objective.adv_clip must be a finite number > 0"),
    (["objective=nft", "sampler=euler", "objective.gamma=0"], "objective.gamma must be a finite number > 0"),
    (["lr_schedule=warmup", "lr_schedule.total_iters=0"], "lr_schedule.total_iters must be an int >= 1"),
    (["lr_schedule.factor=0"], "lr_schedule.factor must be a finite number in (0, 1]"),
    (["reward=dm", "critic.betas=[1.0,0.9]"], "critic.betas must be a finite number in [0, 1)"),
    (["reward=dm", "critic.weight_decay=-1"], "critic.weight_decay must be a finite number >= 0"),
])
def test_a_number_outside_its_meaning_is_refused_before_compute(capsys, tmp_path, overrides, message):
    from rlzoo.commands.train import main

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["task=toy2d", f"run_dir={run_dir}", *overrides])
    line = one_line(capsys.readouterr().err)
    assert exc.value.code == 2 and message in line, line
    assert not run_dir.exists()


def test_a_group_of_one_is_fine_where_the_advantage_has_no_groups():
    from rlzoo.config import compose_config, validate

    validate(compose_config(["task=toy2d", "train.group_size=1", "train.batch_size=8", "advantage=global_std"]))


# --------------------------------------------------------------------------- 7. one line for every failure
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
