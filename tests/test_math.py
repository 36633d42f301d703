"""Parity of the math layer with docs/math.md, on fixed float64 tensors (tolerance 1e-6).

Each expected value is written out from the reference formula here, independently of the code.
"""
import math

import pytest
import torch

from rlzoo import advantages as adv
from rlzoo import objectives as obj
from rlzoo.estimators.elbo import elbo_term
from rlzoo.kl import sde_mean_kl, velocity_kl
from rlzoo.old_policy import eval_ema_decay, old_policy_decay
from rlzoo.policies import ema_update
from rlzoo.samplers.kernels import cps_step, dance_sde_step, euler_step, flow_sde_step

TOL = 1e-6
D = torch.float64


def fixed(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def md(x):
    return x.reshape(x.shape[0], -1).mean(1)


def col(v, like):
    return torch.as_tensor(v, dtype=D).reshape(-1, *([1] * (like.ndim - 1))) if torch.is_tensor(v) else v


@pytest.fixture
def xv():
    return fixed(4, 3, 2, 2, seed=1), fixed(4, 3, 2, 2, seed=2), fixed(4, 3, 2, 2, seed=3)


def test_euler_step(xv):
    x, v, _ = xv
    step = euler_step(x, v, 0.8, 0.6)
    assert torch.allclose(step.x_next, x + v * (0.6 - 0.8), atol=TOL)
    assert step.log_prob is None


@pytest.mark.parametrize("sigma,sigma_next", [(0.8, 0.6), (1.0, 0.9)])
def test_flow_sde_step_scalar(xv, sigma, sigma_next):
    x, v, x_next = xv
    eta = 0.7
    denom = sigma_next if sigma == 1.0 else sigma  # at sigma = 1 use the next sigma
    s = eta * math.sqrt(sigma / (1 - denom))
    dt = sigma_next - sigma
    mu = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    std = s * math.sqrt(-dt)
    logp = md(-((x_next - mu) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi))
    step = flow_sde_step(x, v, sigma, sigma_next, eta=eta, x_next=x_next)
    assert torch.isfinite(step.log_prob).all()
    assert torch.allclose(step.mean, mu, atol=TOL)
    assert torch.allclose(step.std, torch.tensor(std, dtype=D), atol=TOL)
    assert torch.allclose(step.log_prob, logp, atol=TOL)


def test_flow_sde_step_per_sample_sigmas(xv):
    x, v, x_next = xv
    sigma = torch.tensor([1.0, 0.8, 0.5, 0.3], dtype=D)
    sigma_next = torch.tensor([0.9, 0.6, 0.4, 0.1], dtype=D)
    step = flow_sde_step(x, v, sigma, sigma_next, eta=0.5, x_next=x_next)
    for b in range(4):
        one = flow_sde_step(x[b:b + 1], v[b:b + 1], float(sigma[b]), float(sigma_next[b]), eta=0.5,
                            x_next=x_next[b:b + 1])
        assert torch.allclose(step.log_prob[b], one.log_prob[0], atol=TOL)
        assert torch.allclose(step.mean[b], one.mean[0], atol=TOL)


def test_flow_sde_draw_uses_given_noise(xv):
    x, v, noise = xv
    step = flow_sde_step(x, v, 0.8, 0.6, eta=0.7, noise=noise)
    assert torch.allclose(step.x_next, step.mean + step.std * noise, atol=TOL)
    again = flow_sde_step(x, v, 0.8, 0.6, eta=0.7, x_next=step.x_next)
    assert torch.allclose(again.log_prob, step.log_prob, atol=TOL)


def test_cps_step(xv):
    x, v, x_next = xv
    sigma, sigma_next, eta = 0.7, 0.5, 0.7
    std = sigma_next * math.sin(eta * math.pi / 2)
    x0_hat, x1_hat = x - sigma * v, x + (1 - sigma) * v
    mu = x0_hat * (1 - sigma_next) + x1_hat * math.sqrt(sigma_next**2 - std**2)
    step = cps_step(x, v, sigma, sigma_next, eta=eta, x_next=x_next)
    assert torch.allclose(step.mean, mu, atol=TOL)
    assert torch.allclose(step.log_prob, -md((x_next - mu) ** 2), atol=TOL)


def test_dance_sde_step(xv):
    x, v, x_next = xv
    sigma, sigma_next, eta = 0.7, 0.5, 0.3
    dt = sigma_next - sigma
    std = eta * math.sqrt(sigma - sigma_next)
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    mu = x + dt * v - 0.5 * eta**2 * score * dt
    logp = md(-((x_next - mu) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi))
    step = dance_sde_step(x, v, sigma, sigma_next, eta=eta, x_next=x_next)
    assert torch.allclose(step.mean, mu, atol=TOL)
    assert torch.allclose(step.log_prob, logp, atol=TOL)


@pytest.fixture
def elbo_inputs():
    x0, noise, v = fixed(5, 3, 4, 4, seed=4), fixed(5, 3, 4, 4, seed=5), fixed(5, 3, 4, 4, seed=6)
    t = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.05], dtype=D)
    return x0, noise, t, v


def test_elbo_adaptive(elbo_inputs):
    x0, noise, t, v = elbo_inputs
    tt = t.view(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * noise
    x0_hat = x_t - tt * v
    w = md((x0_hat - x0).abs()).clamp_min(1e-5)
    expected = -md((x0_hat - x0) ** 2) / w
    assert torch.allclose(elbo_term(x0, noise, t, v, "adaptive"), expected, atol=TOL)


def test_elbo_adaptive_weight_is_not_differentiated(elbo_inputs):
    x0, noise, t, v = elbo_inputs
    v = v.clone().requires_grad_(True)
    elbo_term(x0, noise, t, v, "adaptive").sum().backward()
    tt = t.view(-1, 1, 1, 1)
    err = ((1 - tt) * x0 + tt * noise - tt * v - x0).detach()
    w = md(err.abs()).view(-1, 1, 1, 1)
    n = err[0].numel()
    expected = 2 * err * tt / (w * n)  # d/dv of -mean((err)^2)/w with err = ... - t v
    assert torch.allclose(v.grad, expected, atol=TOL)


@pytest.mark.parametrize("weighting", ["t", "uniform", "exact"])
def test_elbo_other_weightings(elbo_inputs, weighting):
    x0, noise, t, v = elbo_inputs
    tt = t.view(-1, 1, 1, 1)
    x0_hat = (1 - tt) * x0 + tt * noise - tt * v
    expected = {
        "t": -md((x0_hat - x0) ** 2),
        "uniform": -md((noise - x0 - v) ** 2),
        "exact": -md((1 - tt) / (tt + 1e-3) * (noise - x0 - v) ** 2),
    }[weighting]
    assert torch.allclose(elbo_term(x0, noise, t, v, weighting), expected, atol=TOL)


@pytest.mark.parametrize("weighting, power", [("adaptive", 1), ("uniform", 2), ("t", 0), ("exact", 0)])
def test_elbo_under_guidance_scales_as_paper_a(elbo_inputs, weighting, power):
    """With guidance scale s the adaptive term is divided by s and the uniform one by s² (REFERENCE,
    ELBO); the others are unchanged."""
    x0, noise, t, v = elbo_inputs
    unguided = elbo_term(x0, noise, t, v, weighting)
    assert torch.allclose(elbo_term(x0, noise, t, v, weighting, guidance_scale=4.5), unguided / 4.5**power, atol=TOL)


def test_elbo_unknown_weighting(elbo_inputs):
    with pytest.raises(ValueError, match="valid: adaptive, t, uniform, exact"):
        elbo_term(*elbo_inputs, weighting="snr")


@pytest.fixture
def foA():
    f = torch.tensor([-0.5, -1.2, 0.3, -2.0], dtype=D)
    o = torch.tensor([-0.6, -1.0, 0.3, -1.5], dtype=D)
    A = torch.tensor([0.7, -0.2, 1.5, -6.0], dtype=D)
    return f, o, A


def test_ratio_objectives(foA):
    f, o, A = foA
    lr = f - o
    rho = torch.exp(lr)
    cases = {
        obj.epg_loss: -rho * A * f,
        obj.epg_noratio_loss: -A * f,
        obj.pepg_loss: -rho * (A - lr) * f,
        obj.pepg_noratio_loss: -(A - lr) * f,
        obj.par_loss: 0.5 * rho * (A - (f - o)) ** 2,
        obj.par_noratio_loss: 0.5 * (A - (f - o)) ** 2,
        obj.reinforce_loss: -A * f,
    }
    for fn, expected in cases.items():
        assert torch.allclose(fn(f, o, A), expected, atol=TOL), fn.__name__


def test_ratio_is_detached_in_epg(foA):
    f, o, A = foA
    f = f.clone().requires_grad_(True)
    obj.epg_loss(f, o, A).sum().backward()
    assert torch.allclose(f.grad, -torch.exp(f.detach() - o) * A, atol=TOL)


def test_par_gradient(foA):
    f, o, A = foA
    f = f.clone().requires_grad_(True)
    obj.par_loss(f, o, A).sum().backward()
    rho = torch.exp(f.detach() - o)
    assert torch.allclose(f.grad, -rho * (A - (f.detach() - o)), atol=TOL)


def test_grpo(foA):
    f, o, A = foA
    eps = 1e-3
    r = torch.exp(f - o)
    Ac = A.clamp(-5, 5)
    expected = torch.maximum(-Ac * r, -Ac * r.clamp(1 - eps, 1 + eps))
    assert torch.allclose(obj.grpo_loss(f, o, A, clip_range=eps), expected, atol=TOL)


def test_objectives_reduce_to_minus_A_grad_f_when_ratio_is_one():
    f = torch.tensor([-0.5, -1.2, 0.3], dtype=D, requires_grad=True)
    A = torch.tensor([0.7, -0.2, 1.5], dtype=D)
    for fn in (obj.epg_loss, obj.pepg_loss, obj.par_loss, obj.epg_noratio_loss):
        f.grad = None
        fn(f, f.detach(), A).sum().backward()
        assert torch.allclose(f.grad, -A, atol=TOL), fn.__name__


@pytest.fixture
def rewards():
    R = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5], dtype=D)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    return R, groups


def test_group_advantage_global_std(rewards):
    R, g = rewards
    means = torch.tensor([0.5] * 4 + [0.625] * 4, dtype=D)
    std = R.std(unbiased=False)
    assert torch.allclose(adv.group_advantage(R, g), (R - means) / (std + 1e-4), atol=TOL)


def test_group_advantage_group_std(rewards):
    R, g = rewards
    a, b = R[:4], R[4:]
    expected = torch.cat([(a - a.mean()) / (a.std(unbiased=False) + 1e-4),
                          (b - b.mean()) / (b.std(unbiased=False) + 1e-4)])
    assert torch.allclose(adv.group_advantage(R, g, std="group"), expected, atol=TOL)


def test_exact_and_global_std_advantage(rewards):
    R, g = rewards
    means = torch.tensor([0.5] * 4 + [0.625] * 4, dtype=D)
    assert torch.allclose(adv.exact_advantage(R, g, c=0.1), 0.1 * (R - means), atol=TOL)
    assert torch.allclose(adv.global_std_advantage(R, g),
                          (R - R.mean()) / (R.std(unbiased=False) + 1e-4), atol=TOL)


@pytest.mark.parametrize("alpha,beta,c", [(1e-3, 1e-4, 0.1), (0.1, 0.01, 0.1), (1e-3, 0.01, 10.0),
                                          (1e-3, 0.0, 1.0)])
def test_exact_advantage_scale_is_beta_over_alpha(rewards, alpha, beta, c):
    """Paper A: c = beta_kl/alpha (1e-4/1e-3 = 0.1 in the headline recipe); c = 1 without a KL."""
    R, g = rewards
    means = torch.tensor([0.5] * 4 + [0.625] * 4, dtype=D)
    component = adv.ExactAdvantage(alpha=alpha, beta=beta)
    assert component.c == pytest.approx(c)
    assert torch.allclose(component(R, g), c * (R - means), atol=TOL)


def test_nft_mapping():
    A = torch.tensor([-7.0, -5.0, 0.0, 2.5, 9.0], dtype=D)
    expected = (A.clamp(-5, 5) / 5 / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(adv.nft_mapping(A), expected, atol=TOL)
    assert torch.allclose(adv.nft_mapping(A), torch.tensor([0, 0, 0.5, 0.75, 1], dtype=D), atol=TOL)


def test_kl(xv):
    v, v_ref, std = xv
    assert torch.allclose(velocity_kl(v, v_ref), md((v - v_ref) ** 2), atol=TOL)
    s = torch.tensor(0.3, dtype=D)
    assert torch.allclose(sde_mean_kl(v, v_ref, s), md((v - v_ref) ** 2) / (2 * 0.09), atol=TOL)


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.889), (0.667, 0.556), (0.112, 0.001)])
def test_sde_mean_kl_normalizers(xv, sigma, sigma_next):
    """FlowGRPO's convention (scripts/train_sd3.py): ‖mu - mu_ref‖² / (2·s²) with s = std_dev_t =
    eta·sqrt(sigma/(1 - sigma)) before the sqrt(-dt) factor; `step` divides by the step's full
    variance s²·(-dt), which is 1/|dt| times stronger."""
    from rlzoo.kl import SDEMeanKL
    from rlzoo.types import LikelihoodTerm

    x, v, v_ref = xv
    eta, dt = 0.7, sigma_next - sigma
    s = eta * math.sqrt(sigma / (1 - (sigma_next if sigma == 1.0 else sigma)))

    def mu(vel):
        return x * (1 + s**2 / (2 * sigma) * dt) + vel * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt

    flowgrpo = md((mu(v) - mu(v_ref)) ** 2) / (2 * s**2)
    step, step_ref = (flow_sde_step(x, vel, sigma, sigma_next, eta=eta, sigma_max=sigma_next) for vel in (v, v_ref))
    term = LikelihoodTerm(index=torch.arange(4), log_lik=step.log_prob, log_lik_old=step.log_prob, weight=1.0,
                          nfe_forward=0, nfe_backward=0, mean=step.mean, mean_ref=step_ref.mean, std=step.std,
                          kernel_std=step.kernel_std)
    assert torch.allclose(SDEMeanKL(0.04, normalizer="kernel")(term), flowgrpo, atol=TOL)
    assert torch.allclose(SDEMeanKL(0.04, normalizer="step")(term), flowgrpo / -dt, atol=TOL)
    with pytest.raises(ValueError, match="valid: step, kernel"):
        SDEMeanKL(0.04, normalizer="full")


def test_old_policy_schedules():
    assert old_policy_decay(0, 100) == 0.0
    assert old_policy_decay(1, 1) == pytest.approx(0.001)
    assert old_policy_decay(1, 300) == pytest.approx(0.3)
    assert old_policy_decay(1, 5000) == 0.5
    assert old_policy_decay(2, 74) == 0.0
    assert old_policy_decay(2, 175) == pytest.approx(0.75)
    assert old_policy_decay(2, 10**6) == 0.999
    assert eval_ema_decay(0) == pytest.approx(0.1)
    assert eval_ema_decay(10**6) == 0.9
    with pytest.raises(ValueError, match="valid: 0, 1, 2"):
        old_policy_decay(3, 1)


def test_ema_update():
    target, source = torch.nn.Linear(2, 2).double(), torch.nn.Linear(2, 2).double()
    expected = 0.3 * target.weight.detach().clone() + 0.7 * source.weight.detach()
    ema_update(target, source, 0.3)
    assert torch.allclose(target.weight, expected, atol=TOL)


def test_nft_loss():
    x0, noise, v, v_old = (fixed(3, 2, 2, 2, seed=s) for s in (10, 11, 12, 13))
    t = torch.tensor([0.9, 0.5, 0.1], dtype=D)
    tt = t.view(-1, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * noise
    r = torch.tensor([0.0, 0.25, 1.0], dtype=D)
    for gamma in (1.0, 0.1):
        vp = gamma * v + (1 - gamma) * v_old
        vm = (1 + gamma) * v_old - gamma * v

        def ell(vv):
            e = x_t - tt * vv - x0
            return md(e**2) / md(e.abs()).clamp_min(1e-5)

        expected = 5 * (r * ell(vp) + (1 - r) * ell(vm)) / gamma
        assert torch.allclose(obj.nft_loss(v, v_old, x_t, x0, t, r, gamma), expected, atol=TOL)


def test_awm_log_prob():
    x0, noise, v = (fixed(3, 2, 2, 2, seed=s) for s in (20, 21, 22))
    t = torch.tensor([0.9, 0.5, 0.1], dtype=D)
    ell = md((v - (noise - x0)) ** 2)
    expected = -((ell + 1e-10) ** 0.25 - 1e-10**0.25) * t / 0.25
    assert torch.allclose(obj.awm_log_prob(v, noise, x0, t), expected, atol=TOL)


def test_the_update_reports_ppo_diagnostics_per_term():
    """approx_kl = mean((ρ − 1) − log ρ) (PPO's estimate of the KL to the old policy; 0 at ρ = 1)
    and, for a clipping objective, the share of rows with |ρ − 1| > clip_range, each weighted by
    the term's share like the loss; on fixed log-likelihoods in float64."""
    from types import SimpleNamespace

    from rlzoo.objectives import GRPO, policy_gradient_losses
    from rlzoo.types import LikelihoodTerm, UpdateBatch

    log_lik = torch.tensor([0.0, 0.1, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    log_lik_old = torch.zeros(4, dtype=torch.float64)
    term = LikelihoodTerm(index=torch.arange(4), log_lik=log_lik, log_lik_old=log_lik_old, weight=0.5,
                          nfe_forward=8, nfe_backward=4)
    estimator = SimpleNamespace(terms=lambda *a, **k: [term, term])
    kl = SimpleNamespace(needs_reference=False, beta=0.0)
    rollout = SimpleNamespace(x0=torch.zeros(4, 2))
    batch = UpdateBatch(None, rollout, torch.ones(4, dtype=torch.float64), estimator, kl, None, 4, None, 0)
    parts = list(policy_gradient_losses(GRPO(clip_range=0.15, adv_clip=5.0), batch))
    d = [0.0, 0.1, -0.2, 0.5]
    approx_kl = sum(math.exp(x) - 1 - x for x in d) / 4 * 0.5
    assert len(parts) == 2 and all(abs(p.stats["approx_kl"] - approx_kl) < 1e-12 for p in parts)
    assert all(p.stats["clip_fraction"] == 2 / 4 * 0.5 for p in parts)  # |e^-0.2 − 1| and |e^0.5 − 1| > 0.15
    assert all(p.cost.nfe_forward == 8 and p.stats["likelihood_terms"] == 1 for p in parts)
