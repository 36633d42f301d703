"""Prompt sets: GenEval's families by rule with its metadata schema and a disjoint split; files."""
import subprocess
import sys
from pathlib import Path


def test_cli_writes_the_splits_and_refuses_a_missing_path(tmp_path):
    rlzoo = str(Path(sys.executable).parent / "rlzoo")
    out = subprocess.run([rlzoo, "prompts", "prompts=geneval", "prompts.per_family=10", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "train.jsonl").exists() and (tmp_path / "test.txt").exists()
    out = subprocess.run([rlzoo, "prompts", "prompts=file", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == (
        "rlzoo prompts: error: prompts=file needs prompts.path=<a .txt or .jsonl file>")
