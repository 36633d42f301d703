"""The math layer against its peers' own code, on fixed float64 tensors (tolerance 1e-6).

The expected values in tests/golden/peers.json were computed by the peers' functions — FlowGRPO,
DanceGRPO, DiffusionNFT, AWM and Paper A's public code, each cited there by repository, file and
commit — on the inputs built here; diffusers' scheduler is the oracle for the Euler step. What no
peer computes (per-sample sigmas, gradients through detached weights, schedule properties) is
checked as a property.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from rlzoo import advantages as adv
from rlzoo import objectives as obj
from rlzoo.estimators.elbo import elbo_term
from rlzoo.kl import SDEMeanKL, sde_mean_kl, velocity_kl
from rlzoo.old_policy import eval_ema_decay, old_policy_decay
from rlzoo.policies import ema_update
from rlzoo.samplers.kernels import cps_step, dance_sde_step, euler_step, flow_sde_step
from rlzoo.types import LikelihoodTerm

TOL = 1e-6
D = torch.float64
GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "peers.json").read_text())


def fixed(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def peer(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=D)


def md(x):
    return x.reshape(x.shape[0], -1).mean(1)


def close(actual, expected) -> bool:
    return torch.allclose(torch.as_tensor(actual, dtype=D), peer(expected), atol=TOL, rtol=0)


@pytest.fixture
def xv():
    return fixed(4, 3, 2, 2, seed=1), fixed(4, 3, 2, 2, seed=2), fixed(4, 3, 2, 2, seed=3)


# ------------------------------------------------------------------------------- sampler kernels
@pytest.mark.parametrize("sigma,sigma_next", [(0.8, 0.6), (1.0, 0.9), (0.3, 0.0)])
def test_euler_step_is_diffusers_flow_match_euler(xv, sigma, sigma_next):
    """diffusers' FlowMatchEulerDiscreteScheduler.step from sigma to sigma_next (it computes in float32)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    x, v, _ = xv
    oracle = FlowMatchEulerDiscreteScheduler()
    oracle.set_timesteps(sigmas=[sigma, sigma_next] if sigma_next > 0 else [sigma])
    assert oracle.sigmas[1].item() == pytest.approx(sigma_next, abs=1e-7)
    expected = oracle.step(v.float(), oracle.timesteps[0], x.float()).prev_sample
    step = euler_step(x, v, sigma, sigma_next)
    assert torch.allclose(step.x_next.float(), expected, atol=1e-5) and step.log_prob is None


@pytest.mark.parametrize("case", GOLDEN["flow_sde_step"]["cases"], ids=lambda c: f"{c['sigma']}->{c['sigma_next']}")
def test_flow_sde_step_is_flowgrpo(xv, case):
    """FlowGRPO's sde_step_with_logprob: mean, std and log-density of x_next (at sigma = 1 its
    denominator uses the schedule's second sigma, here sigma_next)."""
    x, v, x_next = xv
    step = flow_sde_step(x, v, case["sigma"], case["sigma_next"], eta=0.7, x_next=x_next)
    assert close(step.mean, case["mean"]) and close(step.log_prob, case["log_prob"])
    assert close(step.std, case["std"]) and close(step.kernel_std, case["std_dev_t"])


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


def test_cps_step_is_flowgrpo_cps(xv):
    """FlowGRPO's sde_type 'cps' (coefficients-preserving): mean and its constant-free log-likelihood."""
    x, v, x_next = xv
    g = GOLDEN["cps_step"]
    step = cps_step(x, v, g["sigma"], g["sigma_next"], eta=g["eta"], x_next=x_next)
    assert close(step.mean, g["mean"]) and close(step.log_prob, g["log_prob"]) and close(step.std, g["std"])


def test_dance_sde_step_is_dancegrpo(xv):
    """DanceGRPO's flux_step. Its log-density drops -log std - ½log 2π by a slip (a discarded
    statement); ours keeps them, which shifts every log-likelihood by one constant and leaves
    ratios unchanged."""
    x, v, x_next = xv
    g = GOLDEN["dance_sde_step"]
    step = dance_sde_step(x, v, g["sigma"], g["sigma_next"], eta=g["eta"], x_next=x_next)
    assert close(step.mean, g["mean"]) and close(step.std, g["std"]) and close(step.log_prob, g["log_prob"])
    constant = -math.log(g["std"]) - 0.5 * math.log(2 * math.pi)
    assert close(step.log_prob - constant, g["log_prob_as_run"])


# ------------------------------------------------------------------------------- ELBO
@pytest.fixture
def elbo_inputs():
    x0, noise, v = fixed(5, 3, 4, 4, seed=4), fixed(5, 3, 4, 4, seed=5), fixed(5, 3, 4, 4, seed=6)
    return x0, noise, peer(GOLDEN["elbo"]["timesteps"]), v


@pytest.mark.parametrize("weighting", ["adaptive", "t", "uniform", "exact"])
def test_elbo_is_paper_a(elbo_inputs, weighting):
    """Paper A's compute_elbo, each weighting."""
    assert close(elbo_term(*elbo_inputs, weighting), GOLDEN["elbo"][weighting])


@pytest.mark.parametrize("weighting", ["adaptive", "uniform"])
def test_elbo_under_guidance_is_paper_a(elbo_inputs, weighting):
    """Paper A's compute_elbo with guidance_scale 4.5 (adaptive divided by s, uniform by s²)."""
    assert close(elbo_term(*elbo_inputs, weighting, guidance_scale=4.5), GOLDEN["elbo"]["guidance_4.5"][weighting])


@pytest.mark.parametrize("weighting", ["t", "exact"])
def test_elbo_guidance_leaves_the_other_weightings(elbo_inputs, weighting):
    assert torch.allclose(elbo_term(*elbo_inputs, weighting, guidance_scale=4.5), elbo_term(*elbo_inputs, weighting),
                          atol=TOL)


def test_elbo_adaptive_weight_is_not_differentiated(elbo_inputs):
    """The adaptive weight w = mean_d|x̂0 - x0| is a constant: the gradient is that of
    -mean_d(err²)/w with w held fixed (err = x_t - t·v - x0)."""
    x0, noise, t, v = elbo_inputs
    v = v.clone().requires_grad_(True)
    elbo_term(x0, noise, t, v, "adaptive").sum().backward()
    tt = t.view(-1, 1, 1, 1)
    err = ((1 - tt) * x0 + tt * noise - tt * v - x0).detach()
    w = md(err.abs()).view(-1, 1, 1, 1)
    assert torch.allclose(v.grad, 2 * err * tt / (w * err[0].numel()), atol=TOL)


def test_elbo_unknown_weighting(elbo_inputs):
    with pytest.raises(ValueError, match="valid: adaptive, t, uniform, exact"):
        elbo_term(*elbo_inputs, weighting="snr")


# ------------------------------------------------------------------------------- objectives
@pytest.fixture
def foA():
    g = GOLDEN["objectives"]["inputs"]
    return peer(g["f"]), peer(g["o"]), peer(g["A"])


@pytest.mark.parametrize("name", ["epg", "epg_noratio", "pepg", "pepg_noratio", "par", "par_noratio", "grpo"])
def test_objectives_are_paper_a(foA, name):
    """Paper A's compute_policy_loss per sample (its grpo is FlowGRPO's, clip 1e-3, A clipped to ±5)."""
    loss = obj.grpo_loss(*foA, clip_range=1e-3) if name == "grpo" else getattr(obj, f"{name}_loss")(*foA)
    assert close(loss, GOLDEN["objectives"]["losses"][name])


def test_reinforce_is_epg_without_ratio(foA):
    assert torch.allclose(obj.reinforce_loss(*foA), obj.epg_noratio_loss(*foA), atol=TOL)


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


def test_objectives_reduce_to_minus_A_grad_f_when_ratio_is_one():
    f = torch.tensor([-0.5, -1.2, 0.3], dtype=D, requires_grad=True)
    A = torch.tensor([0.7, -0.2, 1.5], dtype=D)
    for fn in (obj.epg_loss, obj.pepg_loss, obj.par_loss, obj.epg_noratio_loss):
        f.grad = None
        fn(f, f.detach(), A).sum().backward()
        assert torch.allclose(f.grad, -A, atol=TOL), fn.__name__


@pytest.fixture
def nft_inputs():
    x0, noise, v, v_old = (fixed(3, 2, 2, 2, seed=s) for s in (10, 11, 12, 13))
    t = peer(GOLDEN["nft"]["t"])
    tt = t.view(-1, 1, 1, 1)
    return v, v_old, (1 - tt) * x0 + tt * noise, x0, t


@pytest.mark.parametrize("gamma", [1.0, 0.1])
def test_nft_loss_is_diffusionnft(nft_inputs, gamma):
    """DiffusionNFT's loss per sample (its beta is our gamma; scaled by its adv_clip_max 5)."""
    loss = obj.nft_loss(*nft_inputs, peer(GOLDEN["nft"]["r"]), gamma)
    assert close(loss, GOLDEN["nft"][f"loss_gamma_{gamma:g}"])


def test_nft_objective_scales_by_its_advantage_clip(nft_inputs):
    """DiffusionNFT scales the loss by adv_clip_max, the clip that also maps A to r: at 2.5 both change."""
    v, v_old, x_t, x0, t = nft_inputs
    g = GOLDEN["nft"]["adv_clip_2.5"]
    term = LikelihoodTerm(index=torch.arange(3), log_lik=torch.zeros(3, dtype=D), log_lik_old=torch.zeros(3, dtype=D),
                          weight=1.0, nfe_forward=0, nfe_backward=0, velocity=v, velocity_old=v_old, x_t=x_t, x0=x0, t=t)
    assert close(adv.nft_mapping(peer(g["A"]), 2.5), g["r"])
    assert close(obj.NFT(gamma=1.0, adv_clip=2.5)(term, peer(g["A"])), g["loss"])


def test_nft_mapping_is_diffusionnft():
    g = GOLDEN["nft"]["mapping"]
    assert close(adv.nft_mapping(peer(g["A"]), g["adv_clip_max"]), g["r"])


@pytest.fixture
def awm_term():
    x0, noise, v, v_old = (fixed(3, 2, 2, 2, seed=s) for s in (20, 21, 22, 23))
    return LikelihoodTerm(index=torch.arange(3), log_lik=torch.zeros(3, dtype=D), log_lik_old=torch.zeros(3, dtype=D),
                          weight=1.0, nfe_forward=0, nfe_backward=0, velocity=v, velocity_old=v_old, noise=noise,
                          x0=x0, t=peer(GOLDEN["awm"]["t"]))


def test_awm_log_prob_is_awm(awm_term):
    """AWM's compute_log_prob_awm with the ghuber weighting (power 0.25)."""
    g, term = GOLDEN["awm"], awm_term
    assert close(obj.awm_log_prob(term.velocity, term.noise, term.x0, term.t), g["log_prob"])
    assert close(obj.awm_log_prob(term.velocity_old, term.noise, term.x0, term.t), g["log_prob_old"])


@pytest.mark.parametrize("advantage_max,key", [(1.0, "loss_advantage_max_1"), (None, "loss_no_rescale")])
def test_awm_objective_is_awm(awm_term, advantage_max, key):
    """AWM's exp_first loss: A clipped to ±5, rescaled to ±advantage_max (1 in its configs), PPO-clip 1."""
    g = GOLDEN["awm"]
    assert close(obj.AWM(advantage_max=advantage_max)(awm_term, peer(g["A"])), g[key])


# ------------------------------------------------------------------------------- advantages
@pytest.fixture
def rewards():
    g = GOLDEN["advantages"]
    return peer(g["rewards"]), torch.tensor(g["groups"])


def test_group_advantages_are_flowgrpo(rewards):
    """FlowGRPO's PerPromptStatTracker (mean per prompt; std of the group or of the batch, + 1e-4)
    and its no-tracking branch (mean and std of the batch)."""
    g = GOLDEN["advantages"]
    assert close(adv.group_advantage(*rewards), g["global_std"])
    assert close(adv.group_advantage(*rewards, std="group"), g["group_std"])
    assert close(adv.global_std_advantage(*rewards), g["batch"])


def test_exact_advantage_is_paper_a(rewards):
    """Paper A's adv='exact': beta·(R - mean)/alpha, and (R - mean) without a KL."""
    g = GOLDEN["advantages"]
    assert close(adv.ExactAdvantage(alpha=1e-3, beta=1e-4)(*rewards), g["exact_alpha1e-3_beta1e-4"])
    assert close(adv.ExactAdvantage(alpha=1e-3, beta=0.0)(*rewards), g["exact_beta0"])


@pytest.mark.parametrize("alpha,beta,c", [(1e-3, 1e-4, 0.1), (0.1, 0.01, 0.1), (1e-3, 0.01, 10.0),
                                          (1e-3, 0.0, 1.0)])
def test_exact_advantage_scale_is_beta_over_alpha(rewards, alpha, beta, c):
    """Paper A: c = beta_kl/alpha (1e-4/1e-3 = 0.1 in the headline recipe); c = 1 without a KL."""
    component = adv.ExactAdvantage(alpha=alpha, beta=beta)
    assert component.c == pytest.approx(c)
    assert torch.allclose(component(*rewards), adv.exact_advantage(*rewards, c=c), atol=TOL)


# ------------------------------------------------------------------------------- KL
def test_velocity_kl_is_paper_a():
    """Paper A's kl_method 'girsanov': mean_d (v - v_ref)²."""
    v, v_ref = fixed(5, 3, 4, 4, seed=6), fixed(5, 3, 4, 4, seed=4)
    assert close(velocity_kl(v, v_ref), GOLDEN["elbo"]["velocity_kl_v_vs_x0"])


def test_sde_mean_kl_divides_by_twice_the_variance(xv):
    v, v_ref, _ = xv
    assert torch.allclose(sde_mean_kl(v, v_ref, torch.tensor(0.3, dtype=D)), md((v - v_ref) ** 2) / 0.18, atol=TOL)


@pytest.mark.parametrize("case", GOLDEN["flow_sde_kl"]["cases"], ids=lambda c: f"{c['sigma']}->{c['sigma_next']}")
def test_sde_mean_kl_normalizers(xv, case):
    """normalizer=kernel is FlowGRPO's train_sd3.py KL (‖mu - mu_ref‖² / (2·std_dev_t²), the kernel's
    std before sqrt(-dt)); `step` divides by the step's full variance, 1/|dt| times stronger."""
    x, v, v_ref = xv
    sigma, sigma_next = case["sigma"], case["sigma_next"]
    step, step_ref = (flow_sde_step(x, vel, sigma, sigma_next, eta=0.7, sigma_max=sigma_next) for vel in (v, v_ref))
    term = LikelihoodTerm(index=torch.arange(4), log_lik=step.log_prob, log_lik_old=step.log_prob, weight=1.0,
                          nfe_forward=0, nfe_backward=0, mean=step.mean, mean_ref=step_ref.mean, std=step.std,
                          kernel_std=step.kernel_std)
    assert close(SDEMeanKL(0.04, normalizer="kernel")(term), case["kl"])
    assert close(SDEMeanKL(0.04, normalizer="step")(term), peer(case["kl"]) / (sigma - sigma_next))
    with pytest.raises(ValueError, match="valid: step, kernel"):
        SDEMeanKL(0.04, normalizer="full")


# ------------------------------------------------------------------------------- old policy and EMA
@pytest.mark.parametrize("schedule", [0, 1, 2, 3])
def test_old_policy_schedules_are_diffusionnft(schedule):
    """DiffusionNFT's return_decay (3 is in Paper A's copy)."""
    g = GOLDEN["old_policy_decay"]
    assert [old_policy_decay(schedule, s) for s in g["steps"]] == pytest.approx(g[f"type{schedule}"], abs=1e-12)


def test_unknown_old_policy_schedule():
    with pytest.raises(ValueError, match="valid: 0, 1, 2, 3"):
        old_policy_decay(4, 1)


def test_eval_ema_decay_is_flowgrpo_ema():
    """FlowGRPO's EMAModuleWrapper warm-up, as DiffusionNFT builds it (cap 0.9)."""
    g = GOLDEN["eval_ema_decay"]
    assert [eval_ema_decay(s) for s in g["steps"]] == pytest.approx(g["decay"], abs=1e-12)


def test_ema_update():
    target, source = torch.nn.Linear(2, 2).double(), torch.nn.Linear(2, 2).double()
    expected = 0.3 * target.weight.detach().clone() + 0.7 * source.weight.detach()
    ema_update(target, source, 0.3)
    assert torch.allclose(target.weight, expected, atol=TOL)


def test_ema_update_leaves_what_the_source_does_not_train():
    """A frozen parameter is not touched (shapes' text encoder is identical in every view), and its
    update would have left it as it was anyway: a frozen copy follows the same lerp bit for bit."""
    target, source = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    source.bias.requires_grad_(False)
    with torch.no_grad():  # a frozen part equal in both, as the policy's views hold it
        target.bias.copy_(source.bias)
    frozen = target.bias.detach().clone()
    untouched = target.bias.data_ptr(), target.bias._version
    expected = torch.lerp(target.weight.detach(), source.weight.detach(), 0.7)
    ema_update(target, source, 0.3)
    assert (target.bias.data_ptr(), target.bias._version) == untouched
    assert torch.equal(target.bias, frozen) and torch.equal(torch.lerp(frozen, source.bias, 0.7), frozen)
    assert torch.equal(target.weight, expected)


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
