"""Rollout samplers. Each draws x0 from noise with a velocity function and returns a `Rollout`.

`velocity_fn(x, sigma, cond) -> v` takes a (B,) tensor of sigmas; the policy decides which
weights (current / old / reference) it uses.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlzoo.samplers.kernels import euler_step
from rlzoo.samplers.schedule import shifted_sigmas
from rlzoo.types import Conditioning, Rollout

VelocityFn = Callable[[Tensor, Tensor, Conditioning], Tensor]


class Sampler:
    """Common configuration of all samplers: K steps on the shifted flow-matching schedule."""

    stochastic = False  # does it draw fresh noise inside the loop (and so define log-probs)?
    keeps_trajectory = False  # does its Rollout carry trajectory and behaviour log-probs?

    def __init__(self, num_steps: int = 10, shift: float = 1.0):
        self.num_steps = int(num_steps)
        self.shift = float(shift)

    def sigmas(self) -> Tensor:
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
    """A deterministic sampler: x_{k+1} = step(x_k, sigma_k, sigma_{k+1})."""

    def step(self, velocity_fn: VelocityFn, x: Tensor, sigma: Tensor, sigma_next: Tensor,
             cond: Conditioning) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, velocity_fn: VelocityFn, noise: Tensor, cond: Conditioning, record: bool = False,
               generator: torch.Generator | None = None) -> Rollout:
        sigmas = self.sigmas()
        x = noise
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x = self.step(velocity_fn, x, sigma, sigma_next, cond)
        return Rollout(x0=x, cond=cond, sigmas=sigmas, nfe=self.nfe_per_sample)


class EulerSampler(ODESampler):
    """Euler ODE sampler: x_{k+1} = x_k + v(x_k, sigma_k)·(sigma_{k+1} - sigma_k)."""

    def step(self, velocity_fn, x, sigma, sigma_next, cond):
        v = velocity_fn(x, _sigma_batch(sigma, x), cond)
        return euler_step(x, v, float(sigma), float(sigma_next)).x_next


class DPM2Sampler(ODESampler):
    """DPM-Solver-2 ODE sampler (k-diffusion's `sample_dpm_2`) in the flow parameterisation.

    Each step is an explicit midpoint step with the midpoint in log-sigma:
        sigma_mid = sqrt(sigma·sigma_next),  x_mid = x + v(x, sigma)·(sigma_mid - sigma),
        x_next = x + v(x_mid, sigma_mid)·(sigma_next - sigma);
    the last step (sigma_next = 0) is a plain Euler step, so K steps cost 2K - 1 evaluations.
    """

    @property
    def nfe_per_sample(self) -> int:
        return 2 * self.num_steps - 1

    def step(self, velocity_fn, x, sigma, sigma_next, cond):
        v = velocity_fn(x, _sigma_batch(sigma, x), cond)
        if float(sigma_next) == 0.0:
            return x + v * (sigma_next - sigma)
        sigma_mid = torch.sqrt(sigma * sigma_next)
        x_mid = x + v * (sigma_mid - sigma)
        v_mid = velocity_fn(x_mid, _sigma_batch(sigma_mid, x), cond)
        return x + v_mid * (sigma_next - sigma)
