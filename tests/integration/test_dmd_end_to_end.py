"""objective=dmd / dmdr end to end (tests/unit/test_dmd.py holds the rest): a run stopped and
resumed ends as an uninterrupted one."""
from omegaconf import OmegaConf

from rlzoo.config import build_components, compose_config, validate
from rlzoo.trainer import Trainer

TOY = ["task=toy2d", "objective=dmd", "sampler=euler", "sampler.num_steps=4"]


def test_dmd_and_dmdr_resume_like_an_uninterrupted_run(tmp_path):
    """The critic's weights (a policy view) and optimizer, and the run's randomness (the critic's
    and the objective's streams among it) are checkpointed: 2 + 2 iterations equal 4."""
    common = [*TOY, "debug=tiny", "eval.every=2", "checkpoint_every=2", "eval.num_steps=4"]

    def run(run_dir, iterations, objective):
        cfg = compose_config([*common, f"train.iterations={iterations}", *objective])
        validate(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml")  # (what rlzoo-train writes; `rlzoo evaluate` reads it)
        return Trainer(cfg, run_dir, build_components(cfg)).fit()

    for objective in (["objective=dmd"], ["objective=dmdr", "train.old_policy_schedule=0",
                                          "objective.warmup_iterations=1"]):
        name = objective[0].split("=")[1]
        straight = run(tmp_path / f"{name}_straight", 4, objective)
        run(tmp_path / f"{name}_resumed", 2, objective)
        resumed = run(tmp_path / f"{name}_resumed", 4, objective)
        assert straight["final"] == resumed["final"]
        assert straight["compute"]["nfe_forward"] == resumed["compute"]["nfe_forward"]
    # `rlzoo evaluate` reloads the student alone (the critic's saved weights are not needed)
    from rlzoo.commands.evaluate import main as evaluate_main

    metrics = evaluate_main([f"run_dir={tmp_path / 'dmd_straight'}", "eval.samples=24"])
    assert "sw_data" in metrics
