"""Run directories people can use: compute counted by the estimators, checkpoints that load with
weights_only and fail in one line when damaged, `rlzoo evaluate` and `rlzoo export`."""
import json
import subprocess
import sys
from pathlib import Path

import common
import pytest
import torch
from common import REPO, rlzoo_train_here

TINY = ["task=toy2d", "debug=tiny", "threads=1"]


def trainer(run_dir, *overrides):
    return common.trainer(run_dir, *TINY, *overrides)


def test_elbo_compute_with_two_noise_draws_is_the_hand_count(tmp_path):
    """debug=tiny: batch 8, 3 sampler steps -> int(0.99 * 3) = 2 ELBO terms per sample. Per term
    and noise draw: current + old + reference forwards, one backward; 2 draws."""
    t = trainer(tmp_path, "estimator=elbo", "sampler=euler", "estimator.noise_draws=2", "kl=velocity")
    t.train_step()
    rollout, terms, draws = 8 * 3, 2, 2
    assert t.progress.compute.nfe_forward == rollout + 8 * terms * draws * 3
    assert t.progress.compute.nfe_backward == 8 * terms * draws


def test_trajectory_compute_is_the_hand_count(tmp_path):
    """flow_sde, 3 steps, every step stochastic -> int(3 * 0.99) = 2 trained steps; old
    log-probs reused: current + reference forwards per step, one backward."""
    t = trainer(tmp_path, "estimator=trajectory", "sampler=flow_sde", "kl=sde_mean")
    t.train_step()
    assert t.progress.compute.nfe_forward == 8 * 3 + 8 * 2 * 2
    assert t.progress.compute.nfe_backward == 8 * 2


@pytest.mark.integration
def test_checkpoint_loads_with_weights_only(tmp_path):
    t = trainer(tmp_path)
    t.fit()
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["iteration"] == 2 and set(state["policy"]) == {"current", "old", "ema"}


def train(run_dir, *overrides):
    return rlzoo_train_here(*TINY, f"run_dir={run_dir}", *overrides)


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_evaluate_refuses_bad_input(trained, tmp_path):
    rlzoo = str(Path(sys.executable).parent / "rlzoo")
    for args, expected in ((["weights=best"], "unknown weights='best'; valid: ema, current, base"),
                           ([], None)):
        run_dir = trained if args else tmp_path
        out = subprocess.run([rlzoo, "evaluate", f"run_dir={run_dir}", *args], capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert (expected or "holds no run") in out.stderr


@pytest.mark.integration
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


@pytest.mark.integration
def test_debug_tiny_keeps_only_the_first_and_last_checkpoint(tmp_path):
    """debug=tiny sets checkpoint_every=null: no periodic checkpoints, the last one is written."""
    t = trainer(tmp_path)
    saved = []
    save = t.save_checkpoint
    t.save_checkpoint = lambda: (saved.append(t.progress.iteration), save())[1]
    t.fit()
    assert saved == [0, 2]


def test_optimizer_and_lr_schedule_are_components(tmp_path):
    """optimizer=adam builds torch.optim.Adam; lr_schedule=warmup ramps the logged lr linearly
    over its optimizer steps (LinearLR from start_factor to 1)."""
    t = trainer(tmp_path, "optimizer=adam", "optimizer.lr=0.01", "lr_schedule=warmup",
                "lr_schedule.start_factor=0.5", "lr_schedule.total_iters=2")
    assert type(t.optimizer) is torch.optim.Adam
    lrs = [t.train_step()["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.0075, 0.01, 0.01])
