"""ODE samplers on a flow whose exact velocity is known: Gaussian data N(0, s²) in 1-D."""
import torch

from rlzoo.samplers import DPM2Sampler, EulerSampler
from rlzoo.samplers.schedule import shifted_sigmas
from rlzoo.types import Conditioning

S = 0.5  # data std


def exact_velocity(x, sigma, cond):
    """v(x, t) = E[eps - x0 | x_t = x] for x0 ~ N(0, S²): x·(t - (1-t)·S²)/((1-t)²·S² + t²)."""
    t = sigma.to(x.dtype).view(-1, 1)
    return x * (t - (1 - t) * S**2) / ((1 - t) ** 2 * S**2 + t**2)


def cond(n):
    ids = torch.zeros(n, dtype=torch.long)
    return Conditioning(prompts=[""] * n, inputs={}, prompt_ids=ids, group_ids=ids)


def error(sampler):
    noise = torch.linspace(-2, 2, 9, dtype=torch.float64).view(-1, 1)
    rollout = sampler.sample(exact_velocity, noise, cond(9))
    return float((rollout.x0 - S * noise).abs().max()), rollout  # the exact ODE maps z to S·z


def test_shifted_sigmas_match_flow_match_scheduler():
    sigmas = shifted_sigmas(4, shift=3.0, dtype=torch.float64)
    t = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    assert torch.allclose(sigmas, 3 * t / (1 + 2 * t))
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0


def test_dpm2_is_second_order_and_beats_euler():
    e_euler, r_euler = error(EulerSampler(10))
    e_dpm2_10, r_dpm2 = error(DPM2Sampler(10))
    e_dpm2_20, _ = error(DPM2Sampler(20))
    assert r_euler.nfe == 10 and r_dpm2.nfe == 19
    assert e_dpm2_10 < e_euler / 3
    assert e_dpm2_10 < 0.02
    assert e_dpm2_20 < e_dpm2_10 / 2.5  # halving the step size shrinks the error ~4x (2nd order)


def test_ode_samplers_keep_no_trajectory():
    for sampler in (EulerSampler(5), DPM2Sampler(5)):
        _, rollout = error(sampler)
        assert rollout.trajectory is None and rollout.log_probs is None
        assert not sampler.stochastic and not sampler.keeps_trajectory
