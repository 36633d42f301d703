"""Rollout samplers. Each draws x0 from noise with a velocity function and returns a `Rollout`.

`velocity_fn(x, sigma, cond) -> v` takes a (B,) tensor of sigmas; the policy decides which
weights (current / old / reference) it uses.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlzoo.ranges import check
from rlzoo.samplers.kernels import dpm_solver_2m_step, euler_step
from rlzoo.samplers.schedule import PipelineSchedule, shifted_sigmas
from rlzoo.types import Conditioning, Cost, Rollout

VelocityFn = Callable[[Tensor, Tensor, Conditioning], Tensor]


class Sampler:
    """Common configuration of all samplers: K steps on the shifted flow-matching schedule (`shift`,
    default 1 = none; or a model family's own rule, `schedule`, which then alone sets them), and the
    classifier-free guidance scale of the rollouts (`cfg_scale`, 1 = off: Paper A; FlowGRPO 4.5).
    The guidance itself is applied by the policy to every view, so the estimators and the KL see
    the velocity the sampler used (rlzoo.policies.guided_velocity)."""

    needs = frozenset()
    provides = frozenset()  # "trajectory": its Rollout carries x_k, behaviour log-probs, transition;
    # "differentiable_sample": it records x_k on request and its last step predicts x0 (ODE samplers)

    def __init__(self, num_steps: int = 10, shift: float | None = None, cfg_scale: float = 1.0,
                 schedule: dict | None = None):
        self.num_steps = check("sampler.num_steps", num_steps, 1, integer=True)
        self.cfg_scale = float(check("sampler.cfg_scale", cfg_scale, 1, note="1 = no guidance"))
        # a model family's own schedule rule (FLUX.1's resolution-dependent shift), else `shift`
        self.schedule = None if schedule is None else PipelineSchedule(**schedule)
        if self.schedule is not None and shift is not None:
            raise ValueError(f"sampler.shift={shift} is not read: the model family's sampler.schedule (model.schedule) "
                             f"sets the sigmas; set model.schedule.shift for a static shift, or drop sampler.shift")
        self.shift = None if self.schedule is not None else float(check("sampler.shift", 1.0 if shift is None else shift,
                                                                         0, low_open=True, note="1 = no shift"))

    def sigmas(self) -> Tensor:
        if self.schedule is not None:
            return self.schedule.sigmas(self.num_steps)
        assert self.shift is not None  # (set whenever there is no schedule)
        return shifted_sigmas(self.num_steps, self.shift)

    @property
    def nfe_per_sample(self) -> int:
        return self.num_steps

    def sample(self, velocity_fn: VelocityFn, noise: Tensor, cond: Conditioning, record: bool = False,
               generator: torch.Generator | None = None) -> Rollout:
        """Draw x0 from `noise`; `record` asks for the trajectory (stochastic samplers only)."""
        raise NotImplementedError


def _sigma_batch(sigma: Tensor, x: Tensor) -> Tensor:
    return sigma.to(x.dtype).expand(x.shape[0]).to(x.device)


class ODESampler(Sampler):
    """A deterministic sampler: x_{k+1} = step(x_k, k), where a multistep solver may carry
    `memory` (its previous model output) from one step to the next. Each one's last step is an
    Euler step to sigma = 0, i.e. the x0-prediction x_{K-1} − sigma_{K-1}·v: what DMD's backward
    simulation differentiates ("differentiable_sample")."""

    provides = frozenset({"differentiable_sample"})

    def step(self, velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor, k: int, cond: Conditioning,
             memory):
        """(x_{k+1}, memory for step k + 1)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, velocity_fn: VelocityFn, noise: Tensor, cond: Conditioning, record: bool = False,
               generator: torch.Generator | None = None) -> Rollout:
        """`record` keeps the states x_0 … x_K (for DMD's backward simulation)."""
        sigmas = self.sigmas()
        x, memory, states = noise, None, [noise]
        for k in range(self.num_steps):
            x, memory = self.step(velocity_fn, x, sigmas, k, cond, memory)
            states.append(x)
        return Rollout(x0=x, cond=cond, sigmas=sigmas, nfe=self.nfe_per_sample,
                       cost=Cost(len(x) * self.nfe_per_sample * cond.evaluations_per_velocity),
                       trajectory=torch.stack(states, dim=1) if record else None)


class EulerSampler(ODESampler):
    """Euler ODE sampler: x_{k+1} = x_k + v(x_k, sigma_k)·(sigma_{k+1} - sigma_k)."""

    def step(self, velocity_fn, x, sigmas, k, cond, memory):
        v = velocity_fn(x, _sigma_batch(sigmas[k], x), cond)
        return euler_step(x, v, float(sigmas[k]), float(sigmas[k + 1])).x_next, None


class DPM2Sampler(ODESampler):
    """DPM-Solver++(2M), Paper A's "dpm2": multistep second order on x0-predictions, one model
    evaluation per step (K per rollout); first order on the first step and on the final step
    (`dpm_solver_2m_step`). Equal to diffusers' DPMSolverMultistepScheduler(solver_order=2,
    algorithm_type="dpmsolver++", prediction_type="flow_prediction", lower_order_final=True,
    final_sigmas_type="zero") on the flow schedule (tests/unit/test_samplers.py)."""

    def step(self, velocity_fn, x, sigmas, k, cond, memory):
        sigma, sigma_next = float(sigmas[k]), float(sigmas[k + 1])
        x0_pred = x - sigma * velocity_fn(x, _sigma_batch(sigmas[k], x), cond)
        previous, sigma_prev = memory if memory is not None else (None, None)
        x_next = dpm_solver_2m_step(x, x0_pred, sigma, sigma_next, previous, sigma_prev)
        return x_next, (x0_pred, sigma)


class DPM2SSampler(ODESampler):
    """Single-step DPM-Solver-2 (k-diffusion's `sample_dpm_2`) in the flow parameterisation: an
    explicit midpoint step with the midpoint in log-sigma,
        sigma_mid = sqrt(sigma·sigma_next),  x_mid = x + v(x, sigma)·(sigma_mid - sigma),
        x_next = x + v(x_mid, sigma_mid)·(sigma_next - sigma);
    the last step (sigma_next = 0) is a plain Euler step, so K steps cost 2K - 1 evaluations.
    Not Paper A's solver (that is `dpm2`, the multistep 2M)."""

    @property
    def nfe_per_sample(self) -> int:
        return 2 * self.num_steps - 1

    def step(self, velocity_fn, x, sigmas, k, cond, memory):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        v = velocity_fn(x, _sigma_batch(sigma, x), cond)
        if float(sigma_next) == 0.0:
            return x + v * (sigma_next - sigma), None
        sigma_mid = torch.sqrt(sigma * sigma_next)
        x_mid = x + v * (sigma_mid - sigma)
        v_mid = velocity_fn(x_mid, _sigma_batch(sigma_mid, x), cond)
        return x + v_mid * (sigma_next - sigma), None
