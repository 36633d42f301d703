"""objective=dmd / dmdr and the shared critic (Paper B's baseline): backward simulation, DMD's
gradient through the student's sample against REFERENCE's formula, the critic as a module copy and
as a LoRA adapter, and the one-line errors before any model (a resume: test_dmd_end_to_end.py)."""
import pytest
import torch
from common import lora_targets
from omegaconf import OmegaConf

from rlzoo.config import ConfigError, build, build_components, compose_config, validate
from rlzoo.policies import make_policy
from rlzoo.rng import StreamDraws
from rlzoo.trainer import Trainer
from rlzoo.types import UpdateBatch

TOY = ["task=toy2d", "objective=dmd", "sampler=euler", "sampler.num_steps=4"]


def toy_student(overrides=(), rows=64):
    cfg = compose_config([*TOY, *overrides])
    task = build(cfg.task)
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    critic = build(cfg.critic)
    critic.attach(policy)
    ids = torch.arange(rows) % len(task.train_prompts())
    cond = task.group_conditioning(ids.tolist(), 1)
    noise = torch.randn(rows, 2, generator=torch.Generator().manual_seed(0))
    return cfg, task, policy, critic, cond, noise


@pytest.mark.parametrize("sampler", ["euler", "dpm2", "dpm2s"])
def test_the_last_step_of_an_ode_sampler_is_the_x0_prediction(sampler):
    """What backward simulation relies on: from the recorded x_{K-1}, one differentiable
    x0-prediction reproduces the sampler's own final sample."""
    from rlzoo.ops import x0_prediction

    cfg, task, policy, _, cond, noise = toy_student([f"sampler={sampler}"])
    rollout = build(cfg.sampler).sample(policy.velocity_fn("current"), noise, cond, record=True)
    K = rollout.trajectory.shape[1] - 1
    assert K == 4 and torch.equal(rollout.trajectory[:, 0], noise) and torch.equal(rollout.trajectory[:, -1], rollout.x0)
    x_last, sigma = rollout.trajectory[:, K - 1], rollout.sigmas[K - 1]
    x = x0_prediction(x_last, policy.velocity(x_last, sigma.expand(len(noise)), cond), sigma)
    assert torch.allclose(x, rollout.x0, atol=1e-6)


def pathwise_parts(objective, critic, task, policy, rollout, micro_batch, generator=None):
    """objective=dmd's loss parts on `rollout` (DMD has no policy-gradient part to need more), its
    own draws from `generator` (a stream seeded 0 by default)."""
    objective.use_critic(critic)
    draws = StreamDraws(torch.Generator().manual_seed(0) if generator is None else generator)
    batch = UpdateBatch(policy, rollout, torch.zeros(len(rollout.x0)), None, None, task, micro_batch, None, 0,
                        objective_draws=draws)
    return list(objective.losses(batch))


def dmd_loss_parts(cfg, task, policy, critic, cond, noise, micro_batch=64):
    objective = build(cfg.objective)
    rollout = build(cfg.sampler).sample(policy.velocity_fn("current"), noise, cond, record=True)
    return objective, rollout, pathwise_parts(objective, critic, task, policy, rollout, micro_batch)


def test_dmd_has_no_gradient_while_the_critic_is_the_teacher():
    cfg, task, policy, critic, cond, noise = toy_student()
    _, _, parts = dmd_loss_parts(cfg, task, policy, critic, cond, noise)
    sum(part.loss for part in parts).backward()
    assert all(p.grad is None or not p.grad.any() for p in policy.parameters())


def test_dmd_gradient_through_the_students_sample_matches_the_formula():
    """REFERENCE: g = nan_to_num((x̂_fake − x̂_real) / mean_d|x − x̂_real|) at x_t = (1 − t)·x + t·ε,
    and the loss's gradient on x is g/(B·D); through backward simulation x = x_k − σ_k·v_θ(x_k).
    The oracle re-draws k, t, ε from a copy of the objective's draws and back-propagates
    <g, x>/(B·D) by autograd."""
    cfg, task, policy, critic, cond, noise = toy_student()
    with torch.no_grad():  # a critic that differs from the teacher
        for p in policy.module("critic").parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    objective, generator = build(cfg.objective), torch.Generator().manual_seed(5)
    state = generator.get_state()
    rollout = build(cfg.sampler).sample(policy.velocity_fn("current"), noise, cond, record=True)
    parts = pathwise_parts(objective, critic, task, policy, rollout, 24, generator)  # 3 micro-batches
    assert len(parts) == 3
    sum(part.loss for part in parts).backward()
    ours = [p.grad.clone() for p in policy.parameters()]
    policy.module("current").zero_grad()

    g = torch.Generator()
    g.set_state(state)
    k = int(torch.randint(4, (), generator=g))
    B, D = noise.shape
    x_k, sigma = rollout.trajectory[:, k], rollout.sigmas[k]
    x = x_k - sigma * policy.velocity(x_k, sigma.expand(B), cond)
    expected_loss = 0.0
    for start in range(0, B, 24):
        rows = slice(start, start + 24)
        n = x[rows].shape[0]
        eps = torch.randn((n, D), generator=g)
        t = 0.02 + 0.96 * torch.rand(n, generator=g)
        xr = x[rows].detach()
        x_t = (1 - t[:, None]) * xr + t[:, None] * eps
        sub = cond.select(torch.arange(start, start + n))
        with torch.no_grad():
            real = x_t - t[:, None] * policy.velocity(x_t, t, sub, "reference")
            fake = x_t - t[:, None] * policy.velocity(x_t, t, sub, "critic")
            grad = torch.nan_to_num((fake - real) / (xr - real).abs().mean(dim=1, keepdim=True))
        expected_loss = expected_loss + (grad * x[rows]).sum() / (B * D)
    expected_loss.backward()
    for a, b in zip(ours, (p.grad for p in policy.parameters())):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5)
    assert any(a.abs().max() > 0 for a in ours)


def test_dmdr_adds_the_policy_gradient_after_its_warm_up(tmp_path):
    import json

    cfg = compose_config([*TOY, "objective=dmdr", "debug=tiny", "train.iterations=3", "train.old_policy_schedule=0",
                          "objective.warmup_iterations=2"])
    validate(cfg)
    Trainer(cfg, tmp_path, build_components(cfg)).fit()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["likelihood_terms"] > 0 for m in metrics] == [False, False, True]
    assert all("dmd_loss" in m and "critic/loss" in m for m in metrics)


def test_critic_as_a_lora_adapter_on_t2i(tmp_path):
    """On a LoRA policy the critic is a fourth adapter: it starts equal to the teacher, its
    training moves only its own adapter, the current adapter keeps its gradient, and it is saved
    and loaded with the policy."""
    from rlzoo.distribution_matching.critic import Critic
    from rlzoo.prompts import GenEvalPrompts
    from rlzoo.rewards.images import CLIPReward
    from rlzoo.tasks.t2i import T2ITask
    from rlzoo.types import Rollout

    task = T2ITask(prompts=GenEvalPrompts(per_family=4, test_fraction=0.5),
                   eval_rewards={"reward": CLIPReward(tiny=True)}, embedding_cache=str(tmp_path / "embeddings"))
    model_cfg = OmegaConf.create({"_target_": "rlzoo.tasks.t2i.model.SD3Tiny", "seed": 0, "lora": {
        "rank": 4, "alpha": 8, "init": "gaussian", "target_modules": lora_targets()}})
    policy = make_policy(task.load_base_model(model_cfg), model_cfg)
    critic = Critic(steps_per_update=2, lr=1e-2)
    critic.attach(policy)
    ids = torch.arange(4) % len(task.train_prompts())
    cond = task.group_conditioning(ids.tolist(), 1)
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn((4, *task.sample_shape), generator=g), torch.rand(4, generator=g) * 0.9 + 0.05
    with torch.no_grad():
        assert torch.equal(policy.velocity(x, sigma, cond, "critic"), policy.velocity(x, sigma, cond, "reference"))
    before = {view: {k: v.clone() for k, v in policy.adapter_state_dict(view).items()}
              for view in ("current", "old", "ema", "critic")}
    critic.update(Rollout(x0=x, cond=cond, sigmas=torch.tensor([1.0, 0.0]), nfe=1), StreamDraws(g))
    after = {view: policy.adapter_state_dict(view) for view in before}
    for view in ("current", "old", "ema"):
        assert all(torch.equal(before[view][k], after[view][k]) for k in before[view])
    assert any(not torch.equal(before["critic"][k], after["critic"][k]) for k in before["critic"])
    assert all(p.requires_grad for p in policy.parameters())  # the current adapter still trains
    policy.velocity(x, sigma, cond).square().mean().backward()
    assert all(p.grad is not None for p in policy.parameters())
    with torch.no_grad():
        v_critic = policy.velocity(x, sigma, cond, "critic")
    state = policy.state_dict()
    assert set(state) == {"current", "old", "ema", "critic"}
    fresh = make_policy(task.load_base_model(model_cfg), model_cfg)
    fresh.add_critic()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh.velocity(x, sigma, cond, "critic"), v_critic)


def test_invalid_distillation_settings_fail_before_any_model():
    cases = [
        (["sampler=flow_sde"], "objective=dmd needs differentiable_sample from sampler=flow_sde"),
        (["objective.teacher_cfg_scale=4.5"], "objective.teacher_cfg_scale=4.5 needs classifier-free guidance, "
                                              "which task=toy2d does not support"),
        (["objective.teacher_cfg_scale=0.5"], "objective.teacher_cfg_scale must be >= 1"),
        (["objective.t_range=[0,0.5]"], "objective.t_range must satisfy 0 < lo < hi < 1"),
        (["critic.steps_per_update=0"], "critic.steps_per_update"),
        (["objective=dmdr", "objective.reward_weight=-1"], "objective.reward_weight"),
        (["task=t2i", "model=sd3_tiny"], "objective=dmd distils from the base model as teacher, but model.teacher=false"),
        (["task=t2i", "model=sd3_tiny", "reward=dm", "model.teacher=true"],
         "task.eval_rewards.reward uses R_dm, which needs the training run's critic"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            validate(compose_config([*TOY, *overrides]))
        assert message in str(info.value), (overrides, str(info.value))
        assert "\n" not in str(info.value)
    # the dmd error lists the samplers it can run with
    with pytest.raises(ConfigError, match="use sampler=dpm2, sampler=dpm2s, sampler=euler"):
        validate(compose_config([*TOY, "sampler=flow_sde"]))
