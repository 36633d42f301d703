"""Policy-gradient objectives (Paper A), each a pure per-sample loss; the trainer takes the mean.

Inputs are per-sample tensors of one likelihood term: `log_lik` = f (current policy,
differentiable), `log_lik_old` = o (behaviour policy on the same noise, no grad),
`advantage` = A. lr = sg(f) - o, rho = exp(lr) (detached).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from rlzoo.ops import mean_dims, velocity_target, x0_prediction
from rlzoo.ranges import check
from rlzoo.types import LikelihoodTerm, LossPart, UpdateBatch


def _log_ratio(log_lik: Tensor, log_lik_old: Tensor) -> Tensor:
    return log_lik.detach() - log_lik_old.detach()


def epg_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor) -> Tensor:
    """epg: L = -mean( rho·A·f )."""
    rho = torch.exp(_log_ratio(log_lik, log_lik_old))
    return -rho * advantage * log_lik


def epg_noratio_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor) -> Tensor:
    """epg_noratio: L = -mean( A·f )."""
    return -advantage * log_lik


def pepg_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor) -> Tensor:
    """pepg: L = -mean( rho·(A - lr)·f )."""
    lr = _log_ratio(log_lik, log_lik_old)
    return -torch.exp(lr) * (advantage - lr) * log_lik


def pepg_noratio_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor) -> Tensor:
    """pepg_noratio: L = -mean( (A - lr)·f )."""
    return -(advantage - _log_ratio(log_lik, log_lik_old)) * log_lik


def par_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor) -> Tensor:
    """par: L = ½·mean( rho·(A - (f - o))² )."""
    rho = torch.exp(_log_ratio(log_lik, log_lik_old))
    return 0.5 * rho * (advantage - (log_lik - log_lik_old.detach())) ** 2


def par_noratio_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor) -> Tensor:
    """par_noratio: L = ½·mean( (A - (f - o))² )."""
    return 0.5 * (advantage - (log_lik - log_lik_old.detach())) ** 2


def grpo_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor, clip_range: float = 1e-3,
              adv_clip: float = 5.0) -> Tensor:
    """grpo (PPO-clip): r = exp(f - o), A = clip(A, ±5), L = mean( max(-A·r, -A·clip(r, 1-ε, 1+ε)) )."""
    ratio = torch.exp(log_lik - log_lik_old.detach())
    advantage = advantage.clamp(-adv_clip, adv_clip)
    return torch.maximum(-advantage * ratio, -advantage * ratio.clamp(1 - clip_range, 1 + clip_range))


def reinforce_loss(log_lik: Tensor, log_lik_old: Tensor, advantage: Tensor) -> Tensor:
    """reinforce: L = -mean( A·f ) with the current log-likelihood; no ratio, no old policy."""
    return -advantage * log_lik


class Objective:
    """A per-sample loss over one likelihood term. `uses_ratio`: weighs by (or clips) the ratio
    to the old policy, which is identically 1 when old = current. `needs`: the LikelihoodTerm
    fields it reads beyond log_lik / log_lik_old (checked against the estimator before any compute).

    `losses(batch)` is the loss of one optimizer step, part by part (one backward each): for a
    policy-gradient objective, its loss on each likelihood term the estimator yields, plus the
    KL's (`policy_gradient_losses`); the distillation objectives (rlzoo.objectives.
    distribution_matching) yield a pathwise part through the student's sample instead or besides."""

    uses_ratio = True
    needs = frozenset()
    sampler_needs = frozenset()  # what it needs the rollout sampler to provide
    needs_critic = False  # DMD's fake score (rlzoo.distribution_matching.critic), handed over by `use_critic`
    clip_range: float | None = None  # PPO's clip (grpo, awm): the update reports its clip fraction
    loss_fn = staticmethod(epg_loss)

    def check_run(self, run) -> None:
        """A ratio to the old policy is identically 1 when the old policy is the current one
        (schedule 0) and each rollout gets a single update: the objective would silently become its
        no-ratio version, which is almost certainly not what the user meant."""
        if self.uses_ratio and run.old_policy_schedule == 0 and run.updates_per_rollout == 1:
            name = run.names.get("objective", "?")
            twin = f"objective={name}_noratio, " if f"{name}_noratio" in run.choices.get("objective", ()) else ""
            raise ValueError(f"objective={name} uses the ratio to the old policy, but with train.old_policy_schedule=0 "
                             f"and one update per rollout (train.inner_epochs=1, train.minibatches=1) that ratio is "
                             f"always 1; use {twin}train.old_policy_schedule=1 or 2, or train.inner_epochs>1 / "
                             f"train.minibatches>1")

    def __call__(self, term: LikelihoodTerm, advantage: Tensor) -> Tensor:
        return self.loss_fn(term.log_lik, term.log_lik_old, advantage)

    def losses(self, batch: UpdateBatch) -> Iterator[LossPart]:
        yield from policy_gradient_losses(self, batch)

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the objective as it was (its random numbers are the
        run's: UpdateBatch.objective_draws)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def policy_gradient_losses(objective: Objective, batch: UpdateBatch, weight: float = 1.0) -> Iterator[LossPart]:
    """The policy-gradient part of an optimizer step, one LossPart per likelihood term:

        loss_j = weight · sum_b( objective(term_j, A)_b + beta·kl(term_j)_b ) / B · w_j

    (w_j the term's share of its estimate, B the step's rows), so the parts sum to the step's
    mean loss and each is back-propagated alone (gradient accumulation). Statistics per part: the
    mean ratio to the old policy, the largest |log ratio|, PPO's approximate KL to the old policy
    mean((ρ − 1) − log ρ) and, for a clipping objective, the fraction of rows clipped (|ρ − 1| >
    clip_range); the KL to the reference where one is computed."""
    rollout, kl = batch.rollout, batch.kl
    rows = batch.rows or rollout.x0.shape[0]  # over all ranks in a data-parallel run
    need_reference = kl.needs_reference and kl.beta > 0
    for term in batch.estimator.terms(batch.policy, rollout, batch.micro_batch_size,
                                      need_reference=need_reference, generator=batch.draws):
        per_sample = objective(term, batch.advantage[term.index].to(term.log_lik.dtype))
        # the statistics stay on the device (float64, as Python's floats): the step reads them once
        stats: dict = {"likelihood_terms": 1}
        divergence = kl(term) if need_reference else None
        if divergence is not None:
            per_sample = per_sample + kl.beta * divergence
            stats["kl"] = divergence.detach().sum().double() * term.weight / rows
        log_ratio = term.log_lik.detach() - term.log_lik_old
        ratio = torch.exp(log_ratio)
        stats.update(ratio_mean=ratio.sum().double() * term.weight / rows,
                     log_ratio_abs_max=log_ratio.abs().max().double(),
                     approx_kl=((ratio - 1) - log_ratio).sum().double() * term.weight / rows)
        if objective.clip_range:
            stats["clip_fraction"] = ((ratio - 1).abs() > objective.clip_range).sum().double() * term.weight / rows
        yield LossPart(weight * per_sample.sum() / rows * term.weight, term.cost, stats)


class EPG(Objective):
    loss_fn = staticmethod(epg_loss)


class EPGNoRatio(Objective):
    uses_ratio, loss_fn = False, staticmethod(epg_noratio_loss)


class PEPG(Objective):
    loss_fn = staticmethod(pepg_loss)


class PEPGNoRatio(Objective):
    uses_ratio, loss_fn = False, staticmethod(pepg_noratio_loss)


class PAR(Objective):
    loss_fn = staticmethod(par_loss)


class PARNoRatio(Objective):
    uses_ratio, loss_fn = False, staticmethod(par_noratio_loss)


class Reinforce(Objective):
    uses_ratio, loss_fn = False, staticmethod(reinforce_loss)


class GRPO(Objective):
    clip_range: float

    def __init__(self, clip_range: float = 1e-3, adv_clip: float = 5.0):
        self.clip_range = float(check("objective.clip_range", clip_range, 0, low_open=True))
        self.adv_clip = float(check("objective.adv_clip", adv_clip, 0, low_open=True))

    def __call__(self, term: LikelihoodTerm, advantage: Tensor) -> Tensor:
        return grpo_loss(term.log_lik, term.log_lik_old, advantage, self.clip_range, self.adv_clip)


def nft_loss(velocity: Tensor, velocity_old: Tensor, x_t: Tensor, x0: Tensor, t: Tensor,
             optimality: Tensor, gamma: float = 1.0, scale: float = 5.0) -> Tensor:
    """DiffusionNFT, per sample (r = nft_mapping(A) in [0, 1]):

    v+ = γ·v_θ + (1-γ)·sg(v_old),   v- = (1+γ)·sg(v_old) - γ·v_θ
    ℓ± = mean_d( (x_t - t·v± - x0)² / sg(mean_d|x_t - t·v± - x0|).clamp_min(1e-5) )
    L  = scale · (r·ℓ+ + (1-r)·ℓ-) / γ

    DiffusionNFT's scale is its advantage clip (`adv_clip_max`, 5), the knob that also maps A to r.
    """
    v_old = velocity_old.detach()

    def adaptive(v):
        error = x0_prediction(x_t, v, t) - x0
        return mean_dims(error**2) / mean_dims(error.detach().abs()).clamp_min(1e-5)

    positive = adaptive(gamma * velocity + (1 - gamma) * v_old)
    negative = adaptive((1 + gamma) * v_old - gamma * velocity)
    return scale * (optimality * positive + (1 - optimality) * negative) / gamma


def awm_log_prob(velocity: Tensor, noise: Tensor, x0: Tensor, t: Tensor, power: float = 0.25) -> Tensor:
    """AWM's log-likelihood with the `ghuber` time weighting, per sample:
    ℓ = mean_d( (v - (eps - x0))² ),  logp = -((ℓ + 1e-10)^p - (1e-10)^p)·t/p."""
    loss = mean_dims((velocity - velocity_target(x0, noise)) ** 2)
    return -((loss + 1e-10) ** power - 1e-10**power) * t.to(loss.dtype) / power


class NFT(Objective):
    """DiffusionNFT; maps the advantage to an optimality probability itself."""

    uses_ratio, needs = False, frozenset({"velocity", "velocity_old", "x_t", "x0", "t"})

    def __init__(self, gamma: float = 1.0, adv_clip: float = 5.0):
        self.gamma = float(check("objective.gamma", gamma, 0, low_open=True))
        self.adv_clip = float(check("objective.adv_clip", adv_clip, 0, low_open=True))

    def __call__(self, term: LikelihoodTerm, advantage: Tensor) -> Tensor:
        from rlzoo.advantages import nft_mapping

        velocity, velocity_old, x_t, x0, t = term.needed("velocity", "velocity_old", "x_t", "x0", "t")
        return nft_loss(velocity, velocity_old, x_t, x0, t, nft_mapping(advantage, self.adv_clip), self.gamma,
                        scale=self.adv_clip)


class AWM(Objective):
    """Advantage weighted matching: PPO-clip on the ratio of AWM log-likelihoods, with the advantage
    clipped to ±adv_clip and rescaled to ±advantage_max (AWM's released configs: 5 and 1; null
    keeps the clipped advantage)."""

    needs = frozenset({"velocity", "velocity_old", "noise", "x0", "t"})
    clip_range: float

    def __init__(self, clip_range: float = 1.0, power: float = 0.25, adv_clip: float = 5.0,
                 advantage_max: float | None = 1.0):
        self.clip_range = float(check("objective.clip_range", clip_range, 0, low_open=True))
        self.power = float(check("objective.power", power, 0, 1, low_open=True))
        self.adv_clip = float(check("objective.adv_clip", adv_clip, 0, low_open=True))
        self.advantage_max = None if advantage_max is None else float(
            check("objective.advantage_max", advantage_max, 0, low_open=True))

    def __call__(self, term: LikelihoodTerm, advantage: Tensor) -> Tensor:
        velocity, velocity_old, noise, x0, t = term.needed("velocity", "velocity_old", "noise", "x0", "t")
        log_prob = awm_log_prob(velocity, noise, x0, t, self.power)
        log_prob_old = awm_log_prob(velocity_old, noise, x0, t, self.power)
        advantage = advantage.clamp(-self.adv_clip, self.adv_clip)
        if self.advantage_max is not None:
            advantage = advantage / self.adv_clip * self.advantage_max
        return grpo_loss(log_prob, log_prob_old, advantage, self.clip_range, adv_clip=math.inf)
