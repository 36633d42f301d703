"""reward=dm — R_dm, distribution matching as a reward (Paper B, arXiv 2603.28460). EXPERIMENTAL.

Paper B's equations were not available to us; this is rlzoo's **inferred** reading (README, Paper B):

    R_dm(x) = mean_j [ ELBO_teacher(x; ε_j, t_j) − ELBO_critic(x; ε_j, t_j) ]

a Monte-Carlo estimate of log p_teacher(x) − log p_student(x) with shared noise and timesteps
(rlzoo.distillation.distribution_matching_reward). The teacher is the policy's reference view (the
frozen base model). The critic ("fake score", DMD's) starts as a copy of the teacher and learns the
student's distribution online: `observe` takes `steps_per_update` flow-matching steps on the
iteration's detached student samples, with its own optimizer; its weights and optimizer are
checkpointed and resumed with the run, and its model evaluations are counted in the compute record.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from rlzoo.distillation import distribution_matching_reward, flow_matching_loss
from rlzoo.estimators.elbo import WEIGHTINGS, noised
from rlzoo.rewards import Reward
from rlzoo.types import Conditioning


class DistributionMatchingReward(Reward):
    needs_teacher = True

    def __init__(self, terms: int = 4, weighting: str = "exact", t_range: list[float] = (0.02, 0.98),
                 steps_per_update: int = 5, critic_lr: float = 1.0e-4, critic_weight_decay: float = 0.0,
                 seed: int = 0):
        if int(terms) < 1:
            raise ValueError(f"reward.terms must be a positive int, got {terms!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown reward.weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        lo, hi = (float(v) for v in t_range)
        if not 0 < lo < hi < 1:
            raise ValueError(f"reward.t_range must satisfy 0 < lo < hi < 1, got {list(t_range)!r}")
        if int(steps_per_update) < 1:
            raise ValueError(f"reward.steps_per_update (critic steps per iteration) must be >= 1, "
                             f"got {steps_per_update!r}")
        if float(critic_lr) <= 0:
            raise ValueError(f"reward.critic_lr must be positive, got {critic_lr!r}")
        self.terms, self.weighting, self.t_range = int(terms), weighting, (lo, hi)
        self.steps_per_update, self.critic_lr = int(steps_per_update), float(critic_lr)
        self.critic_weight_decay = float(critic_weight_decay)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.teacher = self.critic = self.optimizer = None
        self.last_critic_loss = float("nan")

    def attach(self, policy) -> None:
        """Take the teacher (the policy's frozen reference view) and start the critic as its copy."""
        from rlzoo.policies import LoraPolicy, trainable_parameters

        if isinstance(policy, LoraPolicy):
            raise ValueError("reward=dm with model.lora is not built yet (its critic would be a fourth adapter)")
        self.teacher = policy.module("reference")
        self.critic = copy.deepcopy(self.teacher)
        trainable = {id(p) for p in trainable_parameters(policy.current)}
        params = [c for c, p in zip(self.critic.parameters(), policy.current.parameters()) if id(p) in trainable]
        for p in self.critic.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(params, lr=self.critic_lr, weight_decay=self.critic_weight_decay)

    def _noise_and_t(self, x0: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
        noise = torch.randn(x0.shape, generator=self.generator, dtype=x0.dtype).to(x0.device)
        t = (lo + (hi - lo) * torch.rand(x0.shape[0], generator=self.generator, dtype=x0.dtype)).to(x0.device)
        return noise, t

    @torch.no_grad()
    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        if self.critic is None:
            raise RuntimeError("reward=dm needs attach(policy) before its first call")
        reward = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for _ in range(self.terms):
            noise, t = self._noise_and_t(x0, *self.t_range)
            x_t = noised(x0, noise, t)
            reward += distribution_matching_reward(x0, noise, t, self.teacher(x_t, t, cond), self.critic(x_t, t, cond),
                                                   self.weighting) / self.terms
        return {"reward": reward, "critic_loss": torch.full_like(reward, self.last_critic_loss)}

    @property
    def nfe_per_row(self) -> int:
        """Model evaluations per row of one reward call (teacher + critic per term)."""
        return 2 * self.terms

    def observe(self, task, rollout) -> dict[str, int]:
        """`steps_per_update` flow-matching steps of the critic on the detached student samples
        (t over the whole range, as DMD2 trains its fake score)."""
        x0, cond = rollout.x0.detach(), rollout.cond
        self.critic.train()
        for _ in range(self.steps_per_update):
            noise, t = self._noise_and_t(x0, 0.0, 1.0)
            loss = flow_matching_loss(self.critic(noised(x0, noise, t), t, cond), x0, noise)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.critic.eval()
        self.last_critic_loss = float(loss.detach())
        rows = x0.shape[0]
        # the reward call (teacher + critic per term) and the critic's steps (forward + backward)
        return {"nfe_forward": rows * (self.nfe_per_row + self.steps_per_update),
                "nfe_backward": rows * self.steps_per_update}

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "last_critic_loss": self.last_critic_loss}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.last_critic_loss = float(state["last_critic_loss"])
