"""The fault suite, area 6: every number is validated for its meaning, not only its type.
Each case asserts its outcome (one line, the exit code) and that no file that existed before
changed (tests/README.md lists the areas)."""

import pytest
from common import one_line


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
