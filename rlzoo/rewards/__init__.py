"""Reward components: map (task, x0, conditioning) to per-sample rewards.

    rewards = reward(task, x0, cond)   # {"reward": (B,), any other per-sample score to log}

`VerifierReward` (the task's own verifier) lives here; image reward models in `images`.
"""
from __future__ import annotations

from torch import Tensor

from rlzoo.types import Conditioning


class Reward:
    """What every reward component has: a call, and a check of its files before any compute."""

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ValueError (one line) when a file the reward needs is missing; loads nothing."""


class VerifierReward(Reward):
    """The task's own verifier. `key` picks the score used as the reward (e.g. `strict`, `soft`);
    `reward` is the task's primary held-out reward. Every score is returned for logging."""

    def __init__(self, key: str = "reward"):
        self.key = key

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        scores = task.score(x0, cond)
        if self.key not in scores:
            raise ValueError(f"reward.key={self.key!r} is not a score of task {task.name!r}; "
                             f"valid: {', '.join(sorted(scores))}")
        return {**scores, "reward": scores[self.key]}
