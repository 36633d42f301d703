"""The trajectory estimator: per-step Gaussian log-probs of the stored stochastic transitions
(FlowGRPO / DanceGRPO), recomputed under the current policy with the rollout's own kernel."""
from __future__ import annotations

from typing import Iterator

import torch

from rlzoo.rng import Draws, as_draws, shared_permutation
from rlzoo.types import LikelihoodTerm, Rollout


class TrajectoryEstimator:
    """One term per (micro-batch, trained step): log p(x_{k+1} | x_k) under the sampler's kernel.

    Trained steps are the rollout's stochastic steps k < int(K·timestep_fraction) (FlowGRPO's
    `timestep_fraction` 0.99: the first 9 of 10 steps; its last, near-deterministic step is
    sampled but not trained); `steps` = `all` of them, or an int = a random subset per iteration.

    Old log-probs: the rollout was drawn by the behaviour policy, which stays fixed until the
    rollout's last update, so the log-probs recorded while sampling *are* the old log-probs
    (FlowGRPO reuses them) and cost no model evaluation. `recompute_old=true` recomputes them
    with the old weights instead (one forward per term; the two agree to 1e-5 in float32,
    tests/unit/test_consistency.py); it is also what happens when a rollout carries no log-probs.
    """

    needs = frozenset({"trajectory"})  # the recorded x_k, log-probs and the sampler's transition
    provides = frozenset({"velocity", "velocity_ref", "x_t", "t", "mean", "mean_ref", "std", "kernel_std"})

    def __init__(self, steps: str | int = "all", timestep_fraction: float = 0.99, recompute_old: bool = False):
        if steps != "all" and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"estimator.steps must be 'all' or a positive int, got {steps!r}")
        if not 0 < float(timestep_fraction) <= 1:
            raise ValueError(f"estimator.timestep_fraction must be in (0, 1], got {timestep_fraction!r}")
        self.steps = steps
        self.timestep_fraction = float(timestep_fraction)
        self.recompute_old = bool(recompute_old)

    def check_run(self, run) -> None:
        """The fraction of the sampler's steps it trains must hold at least one step."""
        fraction, steps = self.timestep_fraction, run.sampler_steps
        if int(steps * fraction) < 1:
            raise ValueError(f"estimator.timestep_fraction={fraction:g} trains no step of the {steps}-step schedule; "
                             f"use a fraction >= {1 / steps:g}")

    def chosen_steps(self, rollout: Rollout, generator: Draws | torch.Generator | None) -> list[int]:
        """The steps this update trains, shared by every row (the same on every rank)."""
        (stochastic,) = rollout.needed("stochastic")
        trained = int(len(stochastic) * self.timestep_fraction)
        steps = [k for k in rollout.stochastic_steps if k < trained]
        if not steps:  # e.g. a window on the last step only: train the stochastic steps there are
            steps = list(rollout.stochastic_steps)
        if isinstance(self.steps, int) and self.steps < len(steps):  # (else "all")
            order = shared_permutation(as_draws(generator), len(steps))[: self.steps]
            steps = sorted(steps[i] for i in order)
        return steps

    def terms(self, policy, rollout: Rollout, micro_batch_size: int, *, need_reference: bool,
              generator: Draws | torch.Generator | None = None) -> Iterator[LikelihoodTerm]:
        if rollout.trajectory is None or rollout.transition is None:
            raise ValueError("the trajectory estimator needs a rollout recorded by a stochastic sampler")
        trajectory, transition, log_probs = rollout.trajectory, rollout.transition, rollout.log_probs
        steps = self.chosen_steps(rollout, generator)
        batch = rollout.x0.shape[0]
        recompute = self.recompute_old or log_probs is None
        forwards = 1 + int(need_reference) + int(recompute)
        for start in range(0, batch, micro_batch_size):
            index = torch.arange(start, min(start + micro_batch_size, batch))
            cond = rollout.cond.select(index)
            for k in steps:
                x, x_next = trajectory[index, k], trajectory[index, k + 1]
                t = torch.full((len(index),), rollout.sigma_values[k], dtype=x.dtype, device=x.device)

                def step(v):
                    return transition(x, v, k, x_next=x_next)

                with torch.no_grad():
                    v_ref = policy.velocity(x, t, cond, which="reference") if need_reference else None
                    if recompute or log_probs is None:
                        log_lik_old = step(policy.velocity(x, t, cond, which="old")).log_prob
                    else:
                        log_lik_old = log_probs[index.to(log_probs.device), k]
                v = policy.velocity(x, t, cond, which="current")
                current = step(v)
                yield LikelihoodTerm(index=index, log_lik=current.log_prob, log_lik_old=log_lik_old,
                                     weight=1.0 / len(steps), velocity=v, velocity_ref=v_ref, x_t=x, t=t,
                                     mean=current.mean, std=current.std, kernel_std=current.kernel_std,
                                     mean_ref=None if v_ref is None else step(v_ref).mean,
                                     nfe_forward=len(index) * forwards * cond.evaluations_per_velocity,
                                     nfe_backward=len(index) * cond.evaluations_per_velocity)
