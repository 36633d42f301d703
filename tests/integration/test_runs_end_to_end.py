"""Run directories people can use (tests/unit/test_runs.py counts their compute): checkpoints
that load with weights_only and fail in one line when damaged, `rlzoo evaluate` and `rlzoo export`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from common import REPO, TINY, rlzoo_train_here


def test_checkpoint_loads_with_weights_only(tiny_trainer, tmp_path):
    t = tiny_trainer()
    t.fit()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["iteration"] == 2 and set(state["policy"]) == {"current", "old", "ema"}


def train(run_dir, *overrides):
    return rlzoo_train_here(*TINY, f"run_dir={run_dir}", *overrides)


def test_a_truncated_checkpoint_is_a_one_line_error_and_stays(tmp_path):
    run = tmp_path / "run"
    assert train(run, "train.iterations=1").returncode == 0
    checkpoint = run / "checkpoints" / "last.pt"
    damaged = checkpoint.read_bytes()[:100]
    checkpoint.write_bytes(damaged)
    out = train(run, "train.iterations=2")
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(checkpoint) in lines[0] and "cannot be read" in lines[0], lines
    assert checkpoint.read_bytes() == damaged


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    out = train(run, "train.iterations=3")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


def test_evaluate_reproduces_the_final_summary(trained):
    final = json.loads((trained / "summary.json").read_text())["final"]
    out = subprocess.run([str(Path(sys.executable).parent / "rlzoo"), "evaluate", f"run_dir={trained}",
                          "threads=1"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    written = json.loads((trained / "evaluations" / "ema.json").read_text())
    assert written["weights"] == "ema" and written["protocol"]["samples"] == 12
    for key, value in final.items():
        assert written["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert (trained / "evaluations" / "ema.png").exists()


def test_evaluate_refuses_bad_input(trained, tmp_path):
    rlzoo = str(Path(sys.executable).parent / "rlzoo")
    for args, expected in ((["weights=best"], "unknown weights='best'; valid: ema, current, base"),
                           ([], None)):
        run_dir = trained if args else tmp_path
        out = subprocess.run([rlzoo, "evaluate", f"run_dir={run_dir}", *args], capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert (expected or "holds no run") in out.stderr


def test_export_writes_safetensors_that_rebuild_the_model(trained, tmp_path):
    from hydra.utils import instantiate
    from safetensors.torch import load_file

    from rlzoo.runs import load_checkpoint

    out = subprocess.run([str(Path(sys.executable).parent / "rlzoo"), "export", f"run_dir={trained}",
                          "--out", str(tmp_path / "exported")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    weights = load_file(tmp_path / "exported" / "model.safetensors")
    model = instantiate(config["model"])
    model.load_state_dict(weights)
    expected = load_checkpoint(trained / "checkpoints" / "last.pt")["policy"]["ema"]
    assert config["weights"] == "ema" and all(torch.equal(weights[k], expected[k]) for k in expected)


def test_debug_tiny_keeps_only_the_first_and_last_checkpoint(tiny_trainer):
    """debug=tiny sets checkpoint_every=null: no periodic checkpoints, the last one is written."""
    t = tiny_trainer()
    saved = []
    save = t.save_checkpoint
    t.save_checkpoint = lambda: (saved.append(t.progress.iteration), save())[1]
    t.fit()
    assert saved == [0, 2]
