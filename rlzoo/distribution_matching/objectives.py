"""Distillation objectives: DMD (the DMD2-style baseline of Paper B) and DMDR (DMD + λ·RL).

objective=dmd: the student is the task's base model sampled with a few-step ODE schedule
(`student.steps`); its loss is DMD's, through the student's differentiable sample (DMD2's
backward simulation): one step k of the K-step schedule is drawn per batch, the rollout's x_k
(sampled without grad) is taken and the student predicts x0 from it with grad,

    x = x_k − σ_k·v_θ(x_k, σ_k)                     (for k = K − 1 this is the final sample)
    t ~ U(t_range),  x_t = (1 − t)·sg(x) + t·ε
    g = nan_to_num((x̂_fake − x̂_real) / mean_d|x − x̂_real|),   L = ½·mean((x − sg(x − g))²)

x̂_real from the frozen teacher (guided with `teacher_cfg_scale`, DMD2: only when > 1), x̂_fake
from the critic (rlzoo.distribution_matching.critic, no guidance). DMD2's generator re-noises its x0-prediction with
fresh noise between steps; rlzoo's student is the task's deterministic ODE sampler, so x_k is the
ODE state at step k (the last step of every rlzoo ODE sampler is an x0-prediction).

objective=dmdr (DMDR, arXiv 2511.13649): DMD's loss plus λ × an rlzoo policy-gradient objective on
the iteration's rewards, λ = 0 during a DMD-only warm-up.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Iterator

import torch
from torch import Tensor

from rlzoo.distribution_matching.distillation import check_t_range, check_teacher, dmd_gradient, dmd_loss, noise_and_t
from rlzoo.objectives import Objective, policy_gradient_losses
from rlzoo.ops import noised, x0_prediction
from rlzoo.rng import shared_randint
from rlzoo.types import Cost, LikelihoodTerm, LossPart, UpdateBatch


class DMD(Objective):
    uses_ratio = False
    needs_critic = True
    sampler_needs = frozenset({"differentiable_sample"})  # x_k recorded; the last step predicts x0

    def __init__(self, t_range: Sequence[float] = (0.02, 0.98), teacher_cfg_scale: float = 1.0):
        self.t_range = check_t_range(t_range, "objective.t_range")
        if not float(teacher_cfg_scale) >= 1.0:
            raise ValueError(f"objective.teacher_cfg_scale must be >= 1 (1 = no guidance), got {teacher_cfg_scale!r}")
        self.teacher_cfg_scale = float(teacher_cfg_scale)
        self.critic = None

    def use_critic(self, critic) -> None:
        """The run's critic (rlzoo.distribution_matching.critic: the fake score beside the frozen teacher)."""
        self.critic = critic

    def check_run(self, run) -> None:
        """A teacher with trained weights; a guided one needs a task with an empty prompt."""
        super().check_run(run)
        check_teacher(run, f"objective={run.names.get('objective', '?')}")
        if self.teacher_cfg_scale != 1.0 and not run.task_supports_guidance:
            raise ValueError(f"objective.teacher_cfg_scale={self.teacher_cfg_scale:g} needs classifier-free guidance, "
                             f"which task={run.task} does not support; use objective.teacher_cfg_scale=1")

    def __call__(self, term: LikelihoodTerm, advantage: Tensor) -> Tensor:
        raise RuntimeError("objective=dmd has no policy-gradient part")

    def losses(self, batch: UpdateBatch) -> Iterator[LossPart]:
        yield from self.distribution_matching_losses(batch)

    def distribution_matching_losses(self, batch: UpdateBatch) -> Iterator[LossPart]:
        """One LossPart per micro-batch of the rollout: DMD's loss on the student's x0-prediction
        at one step k drawn for the batch. The shares sum to the batch's loss (each micro-batch's
        mean weighted by its rows / B), for gradient accumulation; `dmd_loss` in its statistics."""
        policy, critic, task, rollout = batch.policy, self.critic, batch.task, batch.rollout
        if critic is None:
            raise RuntimeError("objective=dmd needs the run's critic (use_critic) before its first update")
        if rollout.trajectory is None:
            raise ValueError("objective=dmd needs the rollout's trajectory (sample with record=True)")
        batch_rows, steps = rollout.x0.shape[0], rollout.trajectory.shape[1] - 1
        total_rows = batch.rows or batch_rows  # over all ranks in a data-parallel run
        draws = batch.objective_draws  # (the run's: this objective's stream, or keyed by row)
        if draws is None:
            raise RuntimeError("objective=dmd draws from the run's randomness (UpdateBatch.objective_draws)")
        k = shared_randint(draws, steps)  # (every rank draws the same k)
        sigma = torch.full((), rollout.sigma_values[k], dtype=rollout.x0.dtype, device=rollout.x0.device)
        for start in range(0, batch_rows, batch.micro_batch_size):
            rows = torch.arange(start, min(start + batch.micro_batch_size, batch_rows))
            part = rollout.select(rows)
            (trajectory,) = part.needed("trajectory")
            x_k, cond = trajectory[:, k], part.cond
            x = x0_prediction(x_k, policy.velocity(x_k, sigma.to(x_k).expand(len(rows)), cond), sigma.to(x_k))
            noise, t = noise_and_t(x, self.t_range, draws.select(rows))
            with torch.no_grad():
                x_t = noised(x.detach(), noise, t)
                teacher_cond = task.guided(cond, self.teacher_cfg_scale).to(x.device)
                x0_real = x0_prediction(x_t, critic.teacher_velocity(x_t, t, teacher_cond), t)
                x0_fake = x0_prediction(x_t, critic.velocity(x_t, t, cond), t)
                gradient = dmd_gradient(x.detach(), x0_real, x0_fake)
            n = len(rows)  # student (with grad) + teacher + critic evaluations
            forward = n * (cond.evaluations_per_velocity + teacher_cond.evaluations_per_velocity + 1)
            loss = dmd_loss(x, gradient) * n / total_rows
            yield LossPart(loss, Cost(forward, n * cond.evaluations_per_velocity), {"dmd_loss": loss.detach().double()})


class DMDR(DMD):
    """DMD loss + λ·(an rlzoo objective on the rewards), λ = 0 for the first `warmup_iterations`
    (DMDR's DMD-only warm-up). `policy_gradient` is an objective (built from its config, default
    EPG, by Hydra's recursive instantiation)."""

    def __init__(self, policy_gradient: Objective | None = None, reward_weight: float = 0.05,
                 warmup_iterations: int = 0, t_range: Sequence[float] = (0.02, 0.98),
                 teacher_cfg_scale: float = 1.0):
        from rlzoo.objectives import EPG

        super().__init__(t_range, teacher_cfg_scale)
        if not float(reward_weight) >= 0:
            raise ValueError(f"objective.reward_weight (λ) must be >= 0, got {reward_weight!r}")
        if not isinstance(warmup_iterations, int) or warmup_iterations < 0:
            raise ValueError(f"objective.warmup_iterations must be an int >= 0, got {warmup_iterations!r}")
        self.rl = policy_gradient if policy_gradient is not None else EPG()
        if not isinstance(self.rl, Objective) or isinstance(self.rl, DMD):
            raise ValueError("objective.policy_gradient must be a policy-gradient objective, not a DMD one")
        self.reward_weight, self.warmup_iterations = float(reward_weight), warmup_iterations
        self.needs, self.uses_ratio, self.clip_range = self.rl.needs, self.rl.uses_ratio, self.rl.clip_range

    def __call__(self, term: LikelihoodTerm, advantage: Tensor) -> Tensor:
        return self.rl(term, advantage)

    def losses(self, batch: UpdateBatch) -> Iterator[LossPart]:
        """λ × the policy-gradient part (none during the warm-up), then DMD's pathwise part."""
        if batch.iteration >= self.warmup_iterations and self.reward_weight:
            yield from policy_gradient_losses(self, batch, weight=self.reward_weight)
        yield from self.distribution_matching_losses(batch)
