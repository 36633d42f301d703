"""Paper B's math on fixed float64 tensors (tolerance 1e-6), each expected value written out from
the REFERENCE formula here: the DMD gradient (DMD2's code), the DMD loss's gradient on x, the
critic's flow-matching loss, and the inferred R_dm estimator."""
import torch

from rlzoo.distillation import distribution_matching_reward, dmd_gradient, dmd_loss, flow_matching_loss

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
