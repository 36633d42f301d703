"""The whole design space on every model family (rlzoo.tasks.t2i.model.ModelFamily): the valid
objective × estimator × sampler grid validates on each tiny family, and the design space's
corners train with LoRA on FLUX.1 and Z-Image (SD3's recipes: test_t2i_end_to_end.py); a run of
each is evaluated and exported."""
import json
import subprocess
import sys

import pytest
from common import run_main

from rlzoo.config import compose_config, valid_grid, validate

FAMILIES = ["sd3_tiny", "flux_tiny", "z_image_tiny"]


@pytest.mark.parametrize("model", FAMILIES)
def test_every_valid_combination_validates_on_the_family(model):
    for objective, estimator, sampler in valid_grid():
        overrides = [f"objective={objective}", f"estimator={estimator}", f"sampler={sampler}"]
        overrides += ["kl=sde_mean"] if estimator == "trajectory" else []
        overrides += ["sampler.window=[0,2]"] if sampler == "mixed" else []
        validate(compose_config(["task=t2i", f"model={model}", "reward.tiny=true", "model.teacher=true", *overrides]),
                 check_model=False)  # (teacher: DMD on random weights, plumbing only)


@pytest.mark.parametrize("model", ["flux_tiny", "z_image_tiny"])
def test_the_design_space_trains_on_the_family_and_is_evaluated_and_exported(tmp_path, model):
    """ELBO + DPM2 (Paper A), trajectory + Flow-SDE (FlowGRPO), NFT, AWM and DMD, 2 iterations each
    on the family's tiny model with LoRA and the tiny PickScore, as one sweep; then `rlzoo evaluate`
    reproduces the first run's final reward and `rlzoo export` writes its LoRA."""
    from rlzoo.commands.cli import main

    out = tmp_path / "sweep"
    recipes = ["paper_a", "flowgrpo", "diffusionnft", "awm", "dmd"]
    result = subprocess.run(
        [sys.executable, "-m", "rlzoo.commands.train", "-m", f"experiment={','.join(recipes)}", "task=t2i",
         f"model={model}", "reward.tiny=true", "debug=tiny",
         "model.teacher=true",  # DMD distils from random weights: plumbing only
         f"task.embedding_cache={tmp_path / 'embeddings'}", f"hydra.sweep.dir={out}"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/summary.json")}
    assert len(summaries) == len(recipes), sorted(summaries)
    for job, summary in summaries.items():
        assert summary["status"] == "completed", (job, summary.get("error"))
        assert (out / job / "lora" / "pytorch_lora_weights.safetensors").exists(), job
    run = next(p.parent for p in out.glob("*paper_a*/summary.json"))
    evaluated = run_main(main, ["evaluate", f"run_dir={run}"])  # (the run's own weights and protocol)
    assert evaluated.returncode == 0, evaluated.stderr
    weights = "ema" if (run / "evaluations" / "ema.json").exists() else "current"
    again = json.loads((run / "evaluations" / f"{weights}.json").read_text())["metrics"]["reward"]
    assert again == pytest.approx(json.loads((run / "summary.json").read_text())["final"]["reward"], abs=1e-6)
    exported = run_main(main, ["export", f"run_dir={run}", "--out", str(tmp_path / "export")])
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "export" / "pytorch_lora_weights.safetensors").exists()
