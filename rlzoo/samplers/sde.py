"""Stochastic samplers: FlowGRPO SDE, CPS, DanceGRPO SDE, and the mixed SDE window."""
from __future__ import annotations

import torch

from rlzoo.ranges import check
from rlzoo.rng import Draws, as_draws
from rlzoo.samplers import Sampler, VelocityFn, _sigma_batch
from rlzoo.samplers.kernels import cps_step, dance_sde_step, euler_step, flow_sde_step
from rlzoo.types import Conditioning, Cost, Rollout

KERNELS = {"flow_sde": flow_sde_step, "cps": cps_step, "dance_sde": dance_sde_step}


def transition(kernel: str, x, velocity, sigma: float, sigma_next: float, sigma_max: float, *, eta, noise=None,
               x_next=None):
    """One stochastic step of the named kernel (FlowGRPO's sigma = 1 rule uses sigma_max, the
    schedule's second sigma)."""
    if kernel == "flow_sde":
        return flow_sde_step(x, velocity, sigma, sigma_next, eta=eta, noise=noise, x_next=x_next,
                             sigma_max=sigma_max)
    return KERNELS[kernel](x, velocity, sigma, sigma_next, eta=eta, noise=noise, x_next=x_next)


class SDESampler(Sampler):
    """K steps on the flow schedule; the stochastic steps draw from the kernel's Gaussian, the
    others are Euler ODE steps. Which steps are stochastic:

    - every step, the last one included (default; FlowGRPO's and Paper A's samplers have no
      special case for it: on the diffusers schedule its std is tiny);
    - `window` = [start, end): a fixed window (MixGRPO);
    - `window_size` with `window_range` = [lo, hi]: a window of that many steps whose start is
      drawn per rollout, uniformly in {lo, ..., hi - window_size} (Flow-GRPO-Fast).

    With `record`, the Rollout keeps the trajectory, the behaviour log-prob of every stochastic
    step and which steps were stochastic."""

    provides = frozenset({"trajectory"})

    def __init__(self, num_steps: int = 10, shift: float | None = None, kernel: str = "flow_sde", eta: float = 0.7,
                 window: list[int] | None = None, window_size: int | None = None,
                 window_range: list[int] | None = None, cfg_scale: float = 1.0, schedule: dict | None = None):
        super().__init__(num_steps, shift, cfg_scale, schedule)
        if kernel not in KERNELS:
            raise ValueError(f"unknown SDE kernel {kernel!r}; valid: {', '.join(KERNELS)}")
        # cps: std = sigma·sin(eta·pi/2), so eta in (0, 1]; 0 (or 2) leaves no noise and no gradient
        self.kernel = kernel
        self.eta = float(check("sampler.eta", eta, 0, 1 if kernel == "cps" else None, low_open=True,
                               note="the SDE's noise level; 0 leaves no noise to take log-probs of"))
        error = window_error(num_steps, window, window_size, window_range)
        if error:
            raise ValueError(error)
        self.window = None if window is None else (int(window[0]), int(window[1]))
        self.window_size = None if window_size is None else int(window_size)
        self.window_range = (0, num_steps) if window_range is None else (int(window_range[0]), int(window_range[1]))

    def stochastic_steps(self, generator: Draws | torch.Generator | None = None) -> torch.Tensor:
        """(K,) bool: the steps of one rollout that draw noise (a drawn window is shared by its rows)."""
        mask = torch.zeros(self.num_steps, dtype=torch.bool)
        if self.window_size is not None:
            lo, hi = self.window_range
            start = int(torch.randint(lo, hi - self.window_size + 1, (1,), generator=as_draws(generator).shared))
            mask[start:start + self.window_size] = True
        elif self.window is not None:
            mask[self.window[0]:self.window[1]] = True
        else:
            mask[:] = True
        return mask

    @torch.no_grad()
    def sample(self, velocity_fn: VelocityFn, noise, cond: Conditioning, record: bool = False,
               generator: Draws | torch.Generator | None = None) -> Rollout:
        sigmas = self.sigmas()
        values = sigmas.tolist()  # (the schedule as Python numbers, read once: the steps and the kernel take them)
        draws = as_draws(generator)
        stochastic = self.stochastic_steps(draws)
        x = noise
        trajectory, log_probs = [x], []
        for k in range(len(values) - 1):
            v = velocity_fn(x, _sigma_batch(sigmas[k], x), cond)
            if stochastic[k]:
                eps = draws.randn(x.shape, dtype=x.dtype).to(x.device)
                step = transition(self.kernel, x, v, values[k], values[k + 1], values[1], eta=self.eta, noise=eps)
                log_probs.append(step.log_prob)
            else:
                step = euler_step(x, v, values[k], values[k + 1])
                log_probs.append(torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
            x = step.x_next
            trajectory.append(x)
        return Rollout(x0=x, cond=cond, sigmas=sigmas, nfe=self.num_steps,
                       cost=Cost(len(x) * self.num_steps * cond.evaluations_per_velocity),
                       trajectory=torch.stack(trajectory, 1) if record else None,
                       log_probs=torch.stack(log_probs, 1) if record else None,
                       stochastic=stochastic if record else None, sigma_values=tuple(values),
                       transition=self.transition_fn(values) if record else None)

    def transition_fn(self, values: list[float]):
        """This sampler's kernel on the schedule `values`, for an estimator: (x_k, velocity, k, x_next) -> Step."""
        def step(x, velocity, k: int, x_next=None):
            return transition(self.kernel, x, velocity, values[k], values[k + 1], values[1], eta=self.eta,
                              x_next=x_next)
        return step


def window_error(num_steps: int, window, window_size, window_range) -> str | None:
    """Why an SDE window setting cannot be used with a `num_steps` schedule, or None."""
    if window is not None and window_size is not None:
        return "set either sampler.window (fixed) or sampler.window_size (drawn per rollout), not both"
    if window is not None:
        if len(window) != 2 or not 0 <= int(window[0]) < int(window[1]) <= num_steps:
            return (f"sampler.window={list(window)} lies outside the {num_steps}-step schedule; use "
                    f"[start, end) with 0 <= start < end <= {num_steps} (e.g. sampler.window=[0,{min(2, num_steps)}])")
    if window_size is not None:
        lo, hi = (0, num_steps) if window_range is None else (int(window_range[0]), int(window_range[1]))
        if window_range is not None and len(window_range) != 2:
            return f"sampler.window_range={list(window_range)} must be [lo, hi]"
        if not (int(window_size) >= 1 and 0 <= lo and lo + int(window_size) <= hi <= num_steps):
            return (f"sampler.window_size={window_size} with window_range=[{lo}, {hi}] does not fit the "
                    f"{num_steps}-step schedule; need 1 <= window_size and 0 <= lo, lo + window_size <= hi <= {num_steps}")
    elif window_range is not None:
        return "sampler.window_range needs sampler.window_size (the number of SDE steps per rollout)"
    return None
