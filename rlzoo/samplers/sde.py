"""Stochastic samplers: FlowGRPO SDE, CPS, DanceGRPO SDE, and the mixed SDE window."""
from __future__ import annotations

import torch

from rlzoo.samplers import Sampler, VelocityFn, _sigma_batch
from rlzoo.samplers.kernels import cps_step, dance_sde_step, euler_step, flow_sde_step
from rlzoo.types import Conditioning, Rollout

KERNELS = {"flow_sde": flow_sde_step, "cps": cps_step, "dance_sde": dance_sde_step}


def transition(kernel: str, x, velocity, sigma, sigma_next, sigmas, *, eta, noise=None, x_next=None):
    """One stochastic step of the named kernel (FlowGRPO's sigma = 1 rule uses sigmas[1])."""
    if kernel == "flow_sde":
        return flow_sde_step(x, velocity, sigma, sigma_next, eta=eta, noise=noise, x_next=x_next,
                             sigma_max=float(sigmas[1]))
    return KERNELS[kernel](x, velocity, sigma, sigma_next, eta=eta, noise=noise, x_next=x_next)


class SDESampler(Sampler):
    """K steps; steps inside `window` = [start, end) draw from the kernel's Gaussian, the others
    are Euler ODE steps (window null = every step but the last, where sigma_next = 0 leaves no
    noise to add). With `record`, the Rollout keeps the trajectory and the behaviour log-prob of
    every stochastic step."""

    stochastic = True
    keeps_trajectory = True

    def __init__(self, num_steps: int = 10, shift: float = 1.0, kernel: str = "flow_sde", eta: float = 0.7,
                 window: list[int] | None = None):
        super().__init__(num_steps, shift)
        if kernel not in KERNELS:
            raise ValueError(f"unknown SDE kernel {kernel!r}; valid: {', '.join(KERNELS)}")
        self.kernel, self.eta = kernel, float(eta)
        start, end = (0, num_steps - 1) if window is None else (int(window[0]), int(window[1]))
        if not 0 <= start < end <= num_steps - 1:
            raise ValueError(f"sampler window {[start, end]} must satisfy 0 <= start < end <= "
                             f"num_steps - 1 = {num_steps - 1} (the last step is deterministic)")
        self.window = (start, end)

    def stochastic_steps(self) -> torch.Tensor:
        mask = torch.zeros(self.num_steps, dtype=torch.bool)
        mask[self.window[0]:self.window[1]] = True
        return mask

    @torch.no_grad()
    def sample(self, velocity_fn: VelocityFn, noise, cond: Conditioning, record: bool = False,
               generator: torch.Generator | None = None) -> Rollout:
        sigmas = self.sigmas()
        stochastic = self.stochastic_steps()
        x = noise
        trajectory, log_probs = [x], []
        for k, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            v = velocity_fn(x, _sigma_batch(sigma, x), cond)
            if stochastic[k]:
                eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                step = transition(self.kernel, x, v, float(sigma), float(sigma_next), sigmas,
                                  eta=self.eta, noise=eps)
                log_probs.append(step.log_prob)
            else:
                step = euler_step(x, v, float(sigma), float(sigma_next))
                log_probs.append(torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
            x = step.x_next
            trajectory.append(x)
        return Rollout(x0=x, cond=cond, sigmas=sigmas, nfe=self.num_steps,
                       trajectory=torch.stack(trajectory, 1) if record else None,
                       log_probs=torch.stack(log_probs, 1) if record else None,
                       stochastic=stochastic if record else None)
