"""ODE samplers on a flow whose exact velocity is known: Gaussian data N(0, s²) in 1-D."""
import pytest
import torch

from rlzoo.samplers import DPM2Sampler, DPM2SSampler, EulerSampler
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


@pytest.mark.parametrize("num_steps", [4, 10, 40])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_schedule_is_diffusers_flow_match_euler(num_steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    oracle = FlowMatchEulerDiscreteScheduler(shift=shift)
    oracle.set_timesteps(num_steps)
    sigmas = shifted_sigmas(num_steps, shift, dtype=torch.float64)
    assert sigmas.shape == (num_steps + 1,)
    assert torch.equal(sigmas.float(), oracle.sigmas.float())


@pytest.mark.parametrize("shift,last", [(1.0, 0.001), (3.0, 0.0089)])
def test_schedule_ends_near_zero_not_at_one_over_k(shift, last):
    """The peers' 10-step schedule (docs/math.md values): the last non-zero sigma is tiny."""
    sigmas = shifted_sigmas(10, shift, dtype=torch.float64)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert abs(float(sigmas[-2]) - last) < 5e-5


def nonlinear_velocity(x, sigma, cond):
    """A fixed, non-linear velocity field (float64) for solver parity."""
    t = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return torch.sin(3 * x) * (1.5 - t) + x * t**2 - 0.3 * torch.cos(x + t)


def diffusers_dpm_solver_pp_2m(sigmas):
    """DPM-Solver++(2M) as diffusers runs it, with its schedule replaced by the flow sigmas."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        solver_order=2, algorithm_type="dpmsolver++", prediction_type="flow_prediction",
        use_flow_sigmas=True, lower_order_final=True, final_sigmas_type="zero")
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.sigmas = sigmas.clone()
    scheduler.timesteps = sigmas[:-1] * 1000
    return scheduler


@pytest.mark.parametrize("num_steps,shift", [(4, 1.0), (10, 1.0), (10, 3.0), (40, 3.0)])
def test_dpm2_is_diffusers_dpm_solver_pp_2m(num_steps, shift):
    """`dpm2` equals diffusers' DPMSolverMultistepScheduler(solver_order=2,
    algorithm_type="dpmsolver++", prediction_type="flow_prediction", use_flow_sigmas=True,
    lower_order_final=True, final_sigmas_type="zero", its sigmas/timesteps replaced by the flow
    schedule after set_timesteps(K)) step by step on a fixed velocity field, and spends one model
    evaluation per step. Each step starts both solvers from the same x in float64 (diffusers
    computes the step itself in float32, hence 1e-6 rather than 1e-12); whole rollouts agree to 1e-5."""
    sampler = DPM2Sampler(num_steps, shift)
    sigmas = sampler.sigmas().double()
    oracle = diffusers_dpm_solver_pp_2m(sigmas)
    noise = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    calls = []

    def counted(x, sigma, c):
        calls.append(1)
        return nonlinear_velocity(x, sigma, c)

    x, memory = noise, None
    for k, timestep in enumerate(oracle.timesteps):
        expected = oracle.step(nonlinear_velocity(x, sigmas[k].expand(5), cond(5)), timestep, x).prev_sample
        x, memory = sampler.step(counted, x, sigmas, k, cond(5), memory)
        assert (x - expected).abs().max() < 1e-6, f"step {k}"
    assert len(calls) == num_steps
    free = diffusers_dpm_solver_pp_2m(sigmas)
    y = noise
    for k, timestep in enumerate(free.timesteps):
        y = free.step(nonlinear_velocity(y, sigmas[k].expand(5), cond(5)), timestep, y).prev_sample
    rollout = sampler.sample(nonlinear_velocity, noise, cond(5))
    assert rollout.nfe == num_steps and (rollout.x0 - y).abs().max() < 1e-5


def test_dpm2_is_second_order():
    """On the exact Gaussian flow the error shrinks ~4x per halving of the step size. (At 10
    steps of the peers' schedule, whose last non-zero sigma is 0.001, it is not better than Euler
    on this flow: the jump 0.112 -> 0.001 is large in log-SNR.)"""
    errors = [error(DPM2Sampler(k))[0] for k in (20, 40, 80)]
    assert errors[1] < errors[0] / 3.5 and errors[2] < errors[1] / 3.5
    assert errors[1] < error(EulerSampler(40))[0] / 1.5
    assert error(DPM2Sampler(10))[1].nfe == 10


def test_dpm2s_is_the_single_step_midpoint_solver():
    e_euler, _ = error(EulerSampler(10))
    e_10, rollout = error(DPM2SSampler(10))
    e_20, _ = error(DPM2SSampler(20))
    assert rollout.nfe == 19  # two evaluations per step, one on the last
    assert e_10 < e_euler / 3 and e_20 < e_10 / 2.5


def test_ode_samplers_keep_no_trajectory():
    for sampler in (EulerSampler(5), DPM2Sampler(5), DPM2SSampler(5)):
        _, rollout = error(sampler)
        assert rollout.trajectory is None and rollout.log_probs is None
        assert "trajectory" not in sampler.provides
