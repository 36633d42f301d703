"""reward=dm — R_dm, distribution matching as a reward (Paper B, arXiv 2603.28460). EXPERIMENTAL.

Paper B's equations were not available to us; this is rlzoo's **inferred** reading (README, Paper B):

    R_dm(x) = mean_j [ ELBO_teacher(x; ε_j, t_j) − ELBO_critic(x; ε_j, t_j) ]

a Monte-Carlo estimate of log p_teacher(x) − log p_student(x) with shared noise and timesteps
(rlzoo.distribution_matching.distillation.distribution_matching_reward). The teacher is the policy's reference view (the
frozen base model). The critic ("fake score", DMD's; rlzoo.distribution_matching.critic, configured by the top-level
`critic` node and shared with objective=dmd) starts as a copy of the teacher and learns the
student's distribution online, once per iteration, on the rollout's detached samples.

`shared_in_group` (off by default: on shapes it made GNDM diverge sooner): every member of a prompt
group gets the same (ε, t) draws — common random numbers, so the within-group comparison that group
normalisation makes (GNDM) depends on the samples rather than on the Monte-Carlo draws.

`form: dmd_norm` is the alternative: R(x) = −RMS_d(g), the negative size of DMD's per-sample
gradient g at the same (ε, t) draws (0 where teacher and critic agree on x).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rlzoo.distribution_matching.critic import unguided
from rlzoo.distribution_matching.distillation import (
    check_t_range,
    check_teacher,
    distribution_matching_reward,
    dmd_gradient_norm_reward,
    noise_and_t,
)
from rlzoo.estimators.elbo import WEIGHTINGS
from rlzoo.ops import noised, x0_prediction
from rlzoo.rewards import Reward
from rlzoo.rng import Draws
from rlzoo.types import Conditioning, Cost

FORMS = ("elbo_difference", "dmd_norm")


class DistributionMatchingReward(Reward):
    needs_critic = True  # the run's critic (rlzoo.distribution_matching.critic) is handed over by use_critic
    takes_draws = True  # its (noise, t) come from the run's randomness (rlzoo.rng.Randomness)
    headline = False  # (measured against a critic that moves with the policy)

    def __init__(self, terms: int = 4, weighting: str = "exact", t_range: Sequence[float] = (0.02, 0.98),
                 form: str = "elbo_difference", shared_in_group: bool = False):
        if not isinstance(terms, int) or terms < 1:
            raise ValueError(f"reward.terms must be a positive int, got {terms!r}")
        if form not in FORMS:
            raise ValueError(f"unknown reward.form {form!r}; valid: {', '.join(FORMS)}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown reward.weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        self.form, self.shared_in_group = form, bool(shared_in_group)
        self.terms, self.weighting, self.t_range = terms, weighting, check_t_range(t_range, "reward.t_range")
        self.critic = None

    def use_critic(self, critic) -> None:
        self.critic = critic

    def check_run(self, run) -> None:
        check_teacher(run, f"reward={run.names.get('reward', '?')}")

    @torch.no_grad()
    def __call__(self, task, x0: Tensor, cond: Conditioning, draws: Draws) -> dict[str, Tensor]:
        """R_dm of each row, its (ε, t) from `draws` (the run's: its reward stream, or with
        train.rng=keyed each row's own generator, so a row's draws do not depend on the rows drawn
        before it)."""
        if self.critic is None:
            raise RuntimeError("reward=dm needs the run's critic (use_critic) before its first call")
        cond = unguided(cond)
        reward = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        groups = torch.unique(cond.group_ids.cpu(), return_inverse=True)[1] if self.shared_in_group else None
        if groups is not None:  # each group's first row
            leaders = torch.zeros(int(groups.max()) + 1, dtype=torch.long).scatter_reduce(
                0, groups, torch.arange(len(groups)), "amin", include_self=False)
        for _ in range(self.terms):
            if groups is None:
                noise, t = noise_and_t(x0, self.t_range, draws)
            else:  # one (ε, t) per prompt group: its members are compared on common random numbers
                # (the stream draws one per group; keyed draws one per row and the group takes its
                # first row's, which is the same whichever process holds the group)
                noise, t = noise_and_t(x0 if draws.keyed else x0[:len(leaders)], self.t_range, draws)
                if draws.keyed:
                    noise, t = noise[leaders.to(x0.device)], t[leaders.to(x0.device)]
                noise, t = noise[groups.to(x0.device)], t[groups.to(x0.device)]
            x_t = noised(x0, noise, t)
            v_teacher, v_critic = self.critic.teacher_velocity(x_t, t, cond), self.critic.velocity(x_t, t, cond)
            if self.form == "elbo_difference":
                term = distribution_matching_reward(x0, noise, t, v_teacher, v_critic, self.weighting)
            else:  # dmd_norm: the size of DMD's gradient on x (0 where teacher and critic agree)
                term = dmd_gradient_norm_reward(x0, x0_prediction(x_t, v_teacher, t), x0_prediction(x_t, v_critic, t))
            reward += term / self.terms
        return {"reward": reward}  # (the trainer logs the critic's loss after its update)

    def cost(self, rows: int) -> Cost:
        """A call's model evaluations: teacher + critic per term and row (the critic's own
        training is the critic's cost, as a learner)."""
        return Cost(rows * 2 * self.terms)
