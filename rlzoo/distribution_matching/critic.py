"""DMD's "fake score" critic (Paper B and its DMD / DMD2 baseline), shared by objective=dmd and
reward=dm: a learner beside the policy (rlzoo.types.Components.learners).

The critic starts as the teacher (the policy's frozen reference view) and learns the *student's*
distribution online: once per iteration the trainer calls `update(rollout, draws, shard)`, which takes
`steps_per_update` steps of the ordinary flow-matching loss on the rollout's detached samples,
with t uniform over (0, 1) and its own AdamW (DMD2 trains its fake score every iteration, 5–10
times per generator step). Its weights are a view of the policy ("critic": a module copy, or a
fourth LoRA adapter on t2i) and are checkpointed with it; the optimizer state here.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlzoo.distributed import SINGLE, Shard
from rlzoo.distribution_matching.distillation import flow_matching_loss, noise_and_t
from rlzoo.ops import noised
from rlzoo.ranges import check
from rlzoo.rng import Draws
from rlzoo.types import Conditioning, Cost, Rollout


class Critic:
    name = "critic"  # its metrics are logged as critic/<key>, its state checkpointed under this name

    def __init__(self, steps_per_update: int = 5, lr: float = 1.0e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999)):
        if not isinstance(steps_per_update, int) or steps_per_update < 1:
            raise ValueError(f"critic.steps_per_update (critic steps per student step, the critic ratio) "
                             f"must be an int >= 1, got {steps_per_update!r}")
        self.steps_per_update = steps_per_update
        self.lr = float(check("critic.lr", lr, 0, low_open=True))
        self.weight_decay = float(check("critic.weight_decay", weight_decay, 0))
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ValueError(f"critic.betas must be two numbers in [0, 1), got {betas!r}")
        beta1, beta2 = (float(check("critic.betas", b, 0, 1, high_open=True)) for b in betas)
        self.betas = (beta1, beta2)
        self.policy: Any = None  # (attach: the run's policy, with its critic view)
        self.optimizer: Any = None
        self.last_loss = float("nan")

    def attach(self, policy) -> None:
        """Make the policy's critic view (a copy of the teacher) and the critic's optimizer."""
        self.policy = policy
        self.optimizer = torch.optim.AdamW(policy.add_critic(), lr=self.lr, betas=self.betas,
                                           weight_decay=self.weight_decay)

    def velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """The critic's velocity (never guided: DMD2's fake score runs without CFG)."""
        return self.policy.velocity(x_t, t, unguided(cond), "critic")

    def teacher_velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """The frozen teacher's velocity, guided as `cond` says."""
        return self.policy.velocity(x_t, t, cond, "reference")

    def update(self, rollout: Rollout, draws: Draws, shard: Shard | None = None) -> Cost:
        """`steps_per_update` flow-matching steps on the rollout's detached samples, the rows'
        noise and t from `draws`; returns the model evaluations spent (forward + backward per row
        and step). Data parallel, `shard` (the iteration's rlzoo.distributed.Shard; None: one
        process, the rollout is the batch): each step follows the batch's mean loss, its gradients
        summed over ranks."""
        if self.optimizer is None:
            raise RuntimeError("the critic needs attach(policy) before its first update")
        x0, cond = rollout.x0.detach(), unguided(rollout.cond)
        shard = Shard(SINGLE, x0.shape[0], 1) if shard is None else shard
        share = shard.share(x0.shape[0])  # of the batch's mean
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        for _ in range(self.steps_per_update):
            noise, t = noise_and_t(x0, (0.0, 1.0), draws)
            loss = flow_matching_loss(self.velocity(noised(x0, noise, t), t, cond), x0, noise)
            self.optimizer.zero_grad(set_to_none=True)
            (loss if share == 1.0 else loss * share).backward()
            shard.sum_gradients(parameters)
            self.optimizer.step()
        self.last_loss = shard.sum({"loss": float(loss.detach()) * share})["loss"]
        rows = x0.shape[0] * self.steps_per_update
        return Cost(rows, rows)

    def metrics(self) -> dict[str, float]:
        """Logged every iteration as critic/<key>: the flow-matching loss of its last step."""
        return {"loss": self.last_loss}

    def state_dict(self) -> dict:
        """The optimizer (the critic's weights are saved with the policy, its noise stream with
        the run's randomness)."""
        return {"optimizer": self.optimizer.state_dict(), "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.last_loss = float(state["last_loss"])


def unguided(cond: Conditioning) -> Conditioning:
    return cond.with_guidance(1.0, None) if cond.guided else cond
