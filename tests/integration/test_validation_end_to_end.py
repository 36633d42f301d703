"""Bad input fails before compute with one line naming the value and the valid choices, and an
existing run directory is left exactly as it was."""
import subprocess
import sys
from pathlib import Path

from common import REPO, snapshot


def test_console_script_reports_the_same_error(run_dir):
    before = snapshot(run_dir)
    out = subprocess.run([str(Path(sys.executable).parent / "rlzoo-train"), "task=toy2d", f"run_dir={run_dir}",
                          "kl=gaussian"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "rlzoo-train: error: unknown kl 'gaussian'; valid choices: none, sde_mean, velocity"]
    assert snapshot(run_dir) == before


def test_list_prints_the_grid():
    out = subprocess.run([str(Path(sys.executable).parent / "rlzoo-train"), "--list"], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0
    assert "objective=epg estimator=elbo sampler=dpm2" in out.stdout
    assert "objective=grpo estimator=trajectory sampler=flow_sde" in out.stdout
    assert "estimator=trajectory sampler=dpm2" not in out.stdout


def test_every_recipe_and_row_composes_to_constructor_arguments():
    from rlzoo.config import available, compose_config, validate

    for group in ("experiment", "row"):
        for name in available(group):
            choice = f"{'+' if group == 'row' else ''}{group}={name}"
            cfg = compose_config(["task=toy2d", choice])
            if cfg.sampler.cfg_scale > 1:  # a guided row needs a task with an empty prompt
                cfg = compose_config(["task=shapes", choice])
            validate(cfg)
