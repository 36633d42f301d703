"""The ELBO likelihood estimator on the final sample only (Paper A).

For each sample x0 and timestep t: fresh eps, x_t = (1 - t)·x0 + t·eps, and every model (current,
old, reference) sees the same x_t; each predicts its own velocity v and x̂0 = x_t - t·v.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from rlzoo.ops import mean_dims, noised, per_sample, velocity_target, x0_prediction
from rlzoo.ranges import check
from rlzoo.rng import Draws, as_draws
from rlzoo.types import LikelihoodTerm, Rollout

WEIGHTINGS = ("adaptive", "t", "uniform", "exact")
TIMESTEPS = ("sampler", "uniform", "logit_normal")


def elbo_term(x0: Tensor, noise: Tensor, t: Tensor, velocity: Tensor, weighting: str = "adaptive",
              guidance_scale: float = 1.0, x_t: Tensor | None = None) -> Tensor:
    """One ELBO term per sample, (B, ...) -> (B,). With x̂0 = x_t - t·v:

    adaptive  w = sg(mean_d |x̂0 - x0|).clamp_min(1e-5)  (float64);  term = -mean_d((x̂0 - x0)² / w) / s
    t         term = -mean_d((x̂0 - x0)²)
    uniform   term = -mean_d((eps - x0 - v)²) / s²
    exact     term = -mean_d((1 - t)/(t + 1e-3) · (eps - x0 - v)²)

    v is the velocity the rollout used (guided when s = guidance_scale > 1); Paper A's code scales
    the adaptive term by 1/s and the uniform term by 1/s² (no-ops without guidance). `x_t`, where
    the caller has built it already (= noised(x0, noise, t)), is not built again.
    """
    if weighting in ("adaptive", "t"):
        x0_hat = x0_prediction(noised(x0, noise, t) if x_t is None else x_t, velocity, t)
        error = x0_hat - x0
        if weighting == "t":
            return -mean_dims(error**2)
        w = mean_dims(error.detach().abs().double()).clamp_min(1e-5)
        return (-mean_dims(error.double() ** 2) / w / guidance_scale).to(x0.dtype)
    if weighting == "uniform":
        return -mean_dims((velocity_target(x0, noise) - velocity) ** 2) / guidance_scale**2
    if weighting == "exact":
        tt = per_sample(t, x0)
        return -mean_dims((1 - tt) / (tt + 1e-3) * (velocity_target(x0, noise) - velocity) ** 2)
    raise ValueError(f"unknown ELBO weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")


class ELBOEstimator:
    """Yields one `LikelihoodTerm` per (micro-batch, timestep), for per-term backward.

    timesteps: `sampler` = the rollout's own schedule without the final 0 (t = 1 included);
               each sample draws a random permutation and uses `num_terms` of its K sigmas,
               so rows of one micro-batch sit at different t. `uniform` / `logit_normal` draw t.
    num_terms: terms per sample; default int(0.99·K) (9 of 10, as in Paper A's code).
    """

    needs = frozenset()  # any rollout: only its final samples are used
    provides = frozenset({"velocity", "velocity_old", "velocity_ref", "x_t", "x0", "noise", "t"})

    def __init__(self, weighting: str = "adaptive", timesteps: str = "sampler",
                 num_terms: int | None = None, noise_draws: int = 1, shared_noise: bool = True):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown ELBO weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if timesteps not in TIMESTEPS:
            raise ValueError(f"unknown ELBO timesteps {timesteps!r}; valid: {', '.join(TIMESTEPS)}")
        self.weighting = weighting
        self.timesteps = timesteps
        self.num_terms = check("estimator.num_terms", num_terms, 1, integer=True, optional=True,
                               note="null = 99% of the sampler's steps")
        self.noise_draws = check("estimator.noise_draws", noise_draws, 1, integer=True)
        self.shared_noise = bool(shared_noise)
        if not self.shared_noise:  # the old velocity is taken at another x_t
            self.provides = self.provides - {"velocity_old"}

    def missing_reason(self, field: str) -> str | None:
        if field == "velocity_old" and not self.shared_noise:
            return ("estimator.shared_noise=false noises the old model's input independently, so there is "
                    "no old velocity at the current x_t; use estimator.shared_noise=true")
        return None

    def check_run(self, run) -> None:
        """num_terms drawn from the sampler's own steps cannot exceed them."""
        terms, steps = self.num_terms, run.sampler_steps
        if terms is not None and self.timesteps == "sampler" and terms > steps:
            raise ValueError(f"estimator.num_terms={terms} is more than the sampler's {steps} steps it draws from "
                             f"(estimator.timesteps=sampler); use 1..{steps}, or estimator.timesteps=uniform")

    def terms_per_sample(self, num_sampler_steps: int) -> int:
        if self.num_terms is not None:
            return int(self.num_terms)
        return max(1, int(num_sampler_steps * 0.99))

    def draw_timesteps(self, rollout: Rollout, generator: Draws | torch.Generator | None = None) -> Tensor:
        """(B, J) timesteps for every sample and term."""
        batch, draws = rollout.x0.shape[0], as_draws(generator)
        schedule = rollout.sigmas[:-1]
        num = self.terms_per_sample(len(schedule))
        if self.timesteps == "sampler":
            if num > len(schedule):
                raise ValueError(f"estimator.num_terms={num} exceeds the sampler's {len(schedule)} steps")
            order = torch.argsort(draws.rand((batch, len(schedule))), dim=1)
            return schedule[order[:, :num]]
        if self.timesteps == "uniform":
            return draws.rand((batch, num))
        return torch.sigmoid(draws.randn((batch, num)))

    def terms(self, policy, rollout: Rollout, micro_batch_size: int, *, need_reference: bool,
              generator: Draws | torch.Generator | None = None) -> Iterator[LikelihoodTerm]:
        x0_all, draws = rollout.x0, as_draws(generator)
        timesteps = self.draw_timesteps(rollout, draws).to(x0_all.device)
        num = timesteps.shape[1]
        for start in range(0, x0_all.shape[0], micro_batch_size):
            index = torch.arange(start, min(start + micro_batch_size, x0_all.shape[0]))
            x0 = x0_all[index]
            cond = rollout.cond.select(index)
            for j in range(num):
                t = timesteps[index, j].to(x0.dtype)
                yield self._term(policy, x0, cond, t, index, need_reference, draws.select(index), 1.0 / num)

    def _term(self, policy, x0, cond, t, index, need_reference, rng: Draws, weight) -> LikelihoodTerm:
        """One timestep's term. The current and reference models always see the same x_t, so
        the velocity KL compares them at one point; with `shared_noise` the old model sees it
        too (the ratio's noise cancels), otherwise it sees an independently noised x_t."""
        draws = []
        for _ in range(self.noise_draws):  # x_t is built once per noise, for every model that sees it
            noise = rng.randn(x0.shape, dtype=x0.dtype).to(x0.device)
            old_noise = noise if self.shared_noise else rng.randn(x0.shape, dtype=x0.dtype).to(x0.device)
            x_t = noised(x0, noise, t)
            x_t_old = x_t if self.shared_noise else noised(x0, old_noise, t)
            with torch.no_grad():
                v_old = policy.velocity(x_t_old, t, cond, which="old")
                v_ref = policy.velocity(x_t, t, cond, which="reference") if need_reference else None
            v = policy.velocity(x_t, t, cond, which="current")
            draws.append((noise, old_noise, x_t, x_t_old, v, v_old, v_ref))
        s = cond.guidance_scale
        log_lik = torch.stack([elbo_term(x0, d[0], t, d[4], self.weighting, s, x_t=d[2]) for d in draws]).mean(0)
        log_lik_old = torch.stack([elbo_term(x0, d[1], t, d[5], self.weighting, s, x_t=d[3]) for d in draws]).mean(0)
        noise, _, x_t, _, v, v_old, v_ref = draws[-1]
        rows = x0.shape[0]
        return LikelihoodTerm(index=index, log_lik=log_lik, log_lik_old=log_lik_old.detach(),
                              weight=weight, velocity=v,
                              velocity_old=v_old if self.shared_noise else None, velocity_ref=v_ref,
                              x_t=x_t, x0=x0, noise=noise, t=t,
                              # per noise draw: current + old (+ reference); the current one is back-propagated
                              # (twice that under classifier-free guidance)
                              nfe_forward=rows * self.noise_draws * (2 + int(need_reference)) * cond.evaluations_per_velocity,
                              nfe_backward=rows * self.noise_draws * cond.evaluations_per_velocity)
