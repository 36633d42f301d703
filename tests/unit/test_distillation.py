"""Paper B's math on fixed float64 tensors (tolerance 1e-6), each expected value written out from
the REFERENCE formula here: the DMD gradient (DMD2's code), the DMD loss's gradient on x, the
critic's flow-matching loss, and the inferred R_dm estimator."""
import pytest
import torch
from common import toy_setup

from rlzoo.distribution_matching.distillation import (
    distribution_matching_reward,
    dmd_gradient,
    dmd_loss,
    flow_matching_loss,
)

TOL = 1e-6
D = torch.float64


def fixed(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_dmd_gradient_direction_and_scale():
    x, real, fake = fixed(3, 2, 4, 4, seed=1), fixed(3, 2, 4, 4, seed=2), fixed(3, 2, 4, 4, seed=3)
    g = dmd_gradient(x, real, fake)
    for b in range(3):
        scale = (x[b] - real[b]).abs().sum() / x[b].numel()
        assert torch.allclose(g[b], (fake[b] - real[b]) / scale, atol=TOL)


def test_dmd_gradient_zero_over_zero_is_zero():
    x = fixed(2, 5, seed=4)
    real = x.clone()
    real[1] = real[1] + 1.0  # row 1 has a scale, row 0 does not
    fake = real.clone()  # and no difference: row 0 is 0/0
    g = dmd_gradient(x, real, fake)
    assert torch.equal(g[0], torch.zeros(5, dtype=D)) and torch.equal(g[1], torch.zeros(5, dtype=D))


def test_dmd_loss_gradient_on_x_is_g_over_BD():
    x = fixed(3, 2, 4, 4, seed=5).requires_grad_(True)
    g = fixed(3, 2, 4, 4, seed=6)
    loss = dmd_loss(x, g)
    loss.backward()
    assert torch.allclose(x.grad, g / x.numel(), atol=TOL)
    assert torch.allclose(loss, 0.5 * (g**2).mean(), atol=TOL)


def test_critic_loss_is_the_flow_matching_loss():
    v, x0, noise = fixed(4, 3, seed=7), fixed(4, 3, seed=8), fixed(4, 3, seed=9)
    expected = sum(((v[b, d] - (noise[b, d] - x0[b, d])) ** 2) for b in range(4) for d in range(3)) / 12
    assert torch.allclose(flow_matching_loss(v, x0, noise), expected, atol=TOL)


def test_r_dm_is_teacher_minus_critic_elbo_at_shared_noise():
    """Exact weighting: term = -mean_d((1 - t)/(t + 1e-3)·(ε - x0 - v)²)."""
    x0, noise = fixed(3, 2, 2, seed=10), fixed(3, 2, 2, seed=11)
    v_teacher, v_critic = fixed(3, 2, 2, seed=12), fixed(3, 2, 2, seed=13)
    t = torch.tensor([0.9, 0.5, 0.1], dtype=D)
    r = distribution_matching_reward(x0, noise, t, v_teacher, v_critic)
    for b in range(3):
        w = (1 - t[b]) / (t[b] + 1e-3)
        teacher = -(w * (noise[b] - x0[b] - v_teacher[b]) ** 2).mean()
        critic = -(w * (noise[b] - x0[b] - v_critic[b]) ** 2).mean()
        assert torch.allclose(r[b], teacher - critic, atol=TOL)
    # the critic equal to the teacher gives no reward; a critic nearer the flow target than the
    # teacher (the student puts more mass on x than the teacher does) a negative one
    assert torch.equal(distribution_matching_reward(x0, noise, t, v_teacher, v_teacher), torch.zeros(3, dtype=D))
    assert (distribution_matching_reward(x0, noise, t, v_teacher, noise - x0) < 0).all()





def test_frechet_distance_equals_torchmetrics_fid_formula():
    """The oracle is torchmetrics' own FID computation on the same means and covariances."""
    from torchmetrics.image.fid import _compute_fid

    from rlzoo.distances import frechet_distance

    a = fixed(500, 2, seed=20) @ torch.tensor([[1.0, 0.3], [0.0, 0.5]], dtype=D) + 1.0
    b = fixed(400, 2, seed=21) * 0.7 - 0.2
    expected = _compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert torch.allclose(frechet_distance(a, b), expected.to(D), atol=1e-6)
    assert abs(float(frechet_distance(a, a))) < 1e-9


def test_sliced_wasserstein_of_shifted_gaussians():
    """Two samples of one isotropic Gaussian, one shifted by m: SW2² = E_θ (m·θ)² = |m|²/D up to
    the sampling noise of the quantiles; identical sets are at distance 0."""
    from rlzoo.distances import sliced_wasserstein

    x = fixed(5000, 2, seed=22)
    m = torch.tensor([0.8, -0.6], dtype=D)  # |m| = 1
    g = torch.Generator().manual_seed(0)
    sw = sliced_wasserstein(x, x + m, projections=500, generator=g)
    assert abs(float(sw) ** 2 - 0.5) < 0.05  # 3 sigma of 500 random directions
    assert float(sliced_wasserstein(x, x, generator=g)) < 1e-12
    # 1-D sets of equal size: the RMS distance of the sorted values (every direction is ±1)
    a, b = fixed(100, 1, seed=23), fixed(100, 1, seed=24) * 2
    expected = (a.flatten().sort().values - b.flatten().sort().values).square().mean().sqrt()
    assert torch.allclose(sliced_wasserstein(a, b, projections=8, generator=g), expected, atol=1e-12)


def test_toy2d_log_density_is_the_data_mixture():
    """Against torch.distributions' own Gaussian mixture, and the data sampler against it: data
    points are likelier than points off the modes."""
    import math

    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    from rlzoo.tasks.toy2d import Toy2DTask

    task = Toy2DTask()
    angle = torch.tensor([0.0, 1.0, 2.5, 4.0], dtype=D)
    x = fixed(4, 2, seed=30) * 2
    for b in range(4):
        centres = torch.stack([task.target(angle[b:b + 1] + o)[0] for o in (0.0, 2 * math.pi / 3, -2 * math.pi / 3)])
        mixture = MixtureSameFamily(Categorical(torch.tensor([0.3, 0.35, 0.35], dtype=D)),
                                    Independent(Normal(centres, torch.full_like(centres, 0.3)), 1))
        assert torch.allclose(task.log_density(x[b:b + 1], angle[b:b + 1])[0], mixture.log_prob(x[b]), atol=TOL)
    data = task.sample_data(angle.float().repeat(500), torch.Generator().manual_seed(1))
    assert task.log_density(data.double(), angle.repeat(500)).mean() > task.log_density(x, angle).mean()


def test_toy2d_evaluation_reports_distances_to_the_data():
    from rlzoo.config import build, compose_config
    from rlzoo.evaluate import EvalProtocol, eval_sampler, evaluate
    from rlzoo.policies import make_policy

    cfg = compose_config(["task=toy2d", "eval.samples=240"])
    task = build(cfg.task)
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    metrics, _ = evaluate(task, policy, "reference", EvalProtocol(eval_sampler(cfg), 240, 0, 240), torch.device("cpu"))
    assert {"fd_data", "sw_data", "nll"} <= set(metrics)
    assert 0 < metrics["sw_data"] < 1.0 and metrics["fd_data"] > 0


def test_distances_to_the_teachers_samples():
    """eval.teacher_steps: the teacher samples the same noise; the teacher compared with itself at
    the same steps is at distance 0, a 2-step student of it is not."""
    from rlzoo.config import build, compose_config
    from rlzoo.evaluate import EvalProtocol, eval_sampler, evaluate
    from rlzoo.policies import make_policy

    cfg = compose_config(["task=toy2d", "eval.num_steps=20"])
    task = build(cfg.task)
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    same, _ = evaluate(task, policy, "reference", EvalProtocol(eval_sampler(cfg), 240, 0, 240, teacher_steps=20), torch.device("cpu"))
    assert same["sw_teacher"] < 1e-6 and abs(same["fd_teacher"]) < 1e-6
    cfg2 = compose_config(["task=toy2d", "eval.num_steps=2"])
    few, _ = evaluate(task, policy, "reference", EvalProtocol(eval_sampler(cfg2), 240, 0, 240, teacher_steps=20), torch.device("cpu"))
    assert few["sw_teacher"] > 0.05 and few["fd_teacher"] > 0.01
    # a model family's schedule rule (sampler.schedule) is the teacher's too: itself at the same steps, distance 0
    from rlzoo.samplers import EulerSampler

    ruled = EvalProtocol(EulerSampler(20, schedule={"shift": 3.0}), 240, 0, 240, teacher_steps=20)
    same, _ = evaluate(task, policy, "reference", ruled, torch.device("cpu"))
    assert same["sw_teacher"] < 1e-6 and abs(same["fd_teacher"]) < 1e-6


def test_r_dm_draws_shared_within_a_prompt_group():
    """reward.shared_in_group: two copies of one sample get the same R_dm when they are in one
    group (same ε, t) and different ones when they are in different groups (own draws)."""
    from types import SimpleNamespace

    task, critic, reward, cond, teacher_samples, draws = toy_setup()
    for i in range(20):
        critic.update(SimpleNamespace(x0=teacher_samples(i) + 0.3, cond=cond), draws["critic"])
    x = teacher_samples(50)[:2].repeat_interleave(2, dim=0)  # rows: a, a, b, b
    ids = torch.tensor([0, 0, 1, 1])
    pair = task.conditioning([task.train_prompts()[0]] * 4, ids, torch.tensor([0, 0, 1, 1]))
    reward.shared_in_group = True
    shared = reward(task, x, pair, draws["reward"])["reward"]
    assert shared[0] == shared[1] and shared[2] == shared[3]
    reward.shared_in_group = False
    own = reward(task, x, pair, draws["reward"])["reward"]
    assert own[0] != own[1] and own[2] != own[3]


@pytest.mark.parametrize("shared_in_group", [False, True])
def test_keyed_r_dm_does_not_depend_on_how_the_batch_is_cut(shared_in_group):
    """train.rng=keyed: R_dm of the whole batch equals R_dm of its two halves (whole prompt groups,
    as two processes hold them) drawn from the same rows' keys; the stream mode would not."""
    from types import SimpleNamespace

    from rlzoo.rng import KeyedDraws

    task, critic, reward, cond, teacher_samples, draws = toy_setup()
    critic.update(SimpleNamespace(x0=teacher_samples(0) + 0.3, cond=cond), draws["critic"])
    reward.shared_in_group = shared_in_group
    x = teacher_samples(1)[:4].repeat_interleave(2, dim=0)  # rows a, a, b, b | c, c, d, d
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    batch = task.conditioning([task.train_prompts()[i] for i in ids.tolist()], ids, ids)
    rows = torch.arange(8)
    whole = reward(task, x, batch, draws=KeyedDraws(0, 3, "reward", rows))["reward"]
    halves = torch.cat([reward(task, x[part], batch.select(part), draws=KeyedDraws(0, 3, "reward", rows[part]))["reward"]
                        for part in (rows[:4], rows[4:])])
    # (the same numbers through the model at another batch size: float32 matmul order)
    assert torch.allclose(whole, halves, rtol=1e-5, atol=1e-6), (whole - halves).abs().max()
    assert torch.isclose(whole[0], whole[1], rtol=1e-5, atol=1e-6) == shared_in_group
    streamed = torch.cat([reward(task, x[part], batch.select(part), draws["reward"])["reward"] for part in (rows[:4], rows[4:])])
    assert not torch.allclose(streamed, whole, rtol=1e-3)
