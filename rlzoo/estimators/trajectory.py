"""The trajectory estimator: per-step Gaussian log-probs of the stored stochastic transitions
(FlowGRPO / DanceGRPO), recomputed under the current and old policy."""
from __future__ import annotations

from typing import Iterator

import torch

from rlzoo.samplers.sde import transition
from rlzoo.types import LikelihoodTerm, Rollout


class TrajectoryEstimator:
    """One term per (micro-batch, stochastic step): log p(x_{k+1} | x_k) under the sampler's kernel.

    steps: `all` stochastic steps, or an int = a random subset of that many per iteration.
    """

    needs_trajectory = True

    def __init__(self, steps: str | int = "all"):
        if steps != "all" and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"estimator.steps must be 'all' or a positive int, got {steps!r}")
        self.steps = steps

    def chosen_steps(self, rollout: Rollout, generator: torch.Generator | None) -> list[int]:
        steps = torch.nonzero(rollout.stochastic).flatten().tolist()
        if self.steps != "all" and self.steps < len(steps):
            order = torch.randperm(len(steps), generator=generator)[: self.steps]
            steps = sorted(steps[i] for i in order.tolist())
        return steps

    def terms(self, policy, rollout: Rollout, micro_batch_size: int, *, need_reference: bool,
              sampler, generator: torch.Generator | None = None) -> Iterator[LikelihoodTerm]:
        if rollout.trajectory is None:
            raise ValueError("the trajectory estimator needs a rollout recorded by a stochastic sampler")
        steps = self.chosen_steps(rollout, generator)
        sigmas = rollout.sigmas
        batch = rollout.x0.shape[0]
        for start in range(0, batch, micro_batch_size):
            index = torch.arange(start, min(start + micro_batch_size, batch))
            cond = rollout.cond.select(index)
            for k in steps:
                x, x_next = rollout.trajectory[index, k], rollout.trajectory[index, k + 1]
                sigma, sigma_next = float(sigmas[k]), float(sigmas[k + 1])
                t = torch.full((len(index),), sigma, dtype=x.dtype, device=x.device)

                def step(v):
                    return transition(sampler.kernel, x, v, sigma, sigma_next, sigmas,
                                      eta=sampler.eta, x_next=x_next)

                with torch.no_grad():
                    v_old = policy.velocity(x, t, cond, which="old")
                    v_ref = policy.velocity(x, t, cond, which="reference") if need_reference else None
                    old = step(v_old)
                v = policy.velocity(x, t, cond, which="current")
                current = step(v)
                extras = {"mean": current.mean, "mean_old": old.mean, "std": current.std}
                if v_ref is not None:
                    extras["mean_ref"] = step(v_ref).mean
                yield LikelihoodTerm(index=index, log_lik=current.log_prob, log_lik_old=old.log_prob,
                                     weight=1.0 / len(steps), velocity=v, velocity_old=v_old,
                                     velocity_ref=v_ref, x_t=x, t=t, extras=extras)
