"""Paper B end to end (tests/unit/test_distillation.py holds its math): the critic learning a
student's samples so that R_dm turns negative on them, and reward=dm in a toy2d run."""
import pytest
import torch
from common import toy_setup

from rlzoo.distribution_matching.distillation import flow_matching_loss


def critic_loss_on(critic, x0, cond, seed=123):
    g = torch.Generator().manual_seed(seed)
    noise, t = torch.randn(x0.shape, generator=g), torch.rand(x0.shape[0], generator=g)
    with torch.no_grad():
        return float(flow_matching_loss(critic.velocity((1 - t[:, None]) * x0 + t[:, None] * noise, t, cond), x0, noise))


def test_the_critic_learns_the_students_samples_and_r_dm_turns_negative():
    """Student frozen and perturbed (its samples are the teacher's shifted by 0.6): the critic's
    denoising loss on fresh student samples falls; R_dm of teacher samples stays ≈ 0 when the critic
    learns the teacher's own samples, and is negative on the perturbed student's samples."""
    from types import SimpleNamespace

    task, critic, reward, cond, teacher_samples, draws = toy_setup()
    student = lambda seed: teacher_samples(seed) + 0.6  # noqa: E731
    before = critic_loss_on(critic, student(99), cond)
    for i in range(150):
        critic.update(SimpleNamespace(x0=student(i), cond=cond), draws["critic"])
    after = critic_loss_on(critic, student(99), cond)
    assert after < 0.8 * before
    r_student = reward(task, student(98), cond, draws["reward"])["reward"].mean()

    task, critic, same, cond, teacher_samples, draws = toy_setup()
    for i in range(150):
        critic.update(SimpleNamespace(x0=teacher_samples(i), cond=cond), draws["critic"])
    r_teacher = same(task, teacher_samples(98), cond, draws["reward"])["reward"].mean()
    assert r_student < 0 and abs(r_teacher) < 0.25 * abs(r_student)


def test_dm_reward_runs_in_a_toy2d_run_and_bad_settings_fail_before_any_model(tmp_path):
    import subprocess
    import sys

    from rlzoo.config import ConfigError, compose_config, validate

    result = subprocess.run([sys.executable, "-m", "rlzoo.commands.train", "task=toy2d", "debug=tiny", "reward=dm",
                             f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for override, message in [("critic.steps_per_update=0", "the critic ratio) must be an int >= 1, got 0"),
                              ("critic.lr=0", "critic.lr must be a finite number > 0"),
                              ("reward.t_range=[0.5,0.2]", "reward.t_range must satisfy 0 < lo < hi < 1"),
                              ("reward.form=score", "unknown reward.form 'score'; valid: elbo_difference, dmd_norm")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate(compose_config(["task=toy2d", "reward=dm", override]))
    # a model with random weights is no teacher (sd3_tiny says model.teacher: false)
    with pytest.raises(ConfigError, match="reward=dm distils from the base model as teacher, but model.teacher=false"):
        validate(compose_config(["task=t2i", "model=sd3_tiny", "reward=dm", "debug=tiny"]))
