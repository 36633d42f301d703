"""The fault suite, area 1: commands never delete or replace what rlzoo did not write (export, report, prompts, evaluate).
Each case asserts its outcome (one line, the exit code) and that no file that existed before
changed (tests/README.md lists the areas)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from common import REPO, cli, kept, one_line, snapshot, user_dir


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
