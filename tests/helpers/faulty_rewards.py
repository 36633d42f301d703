"""Reward components that fail on purpose, for sweep fault-tolerance tests."""
import os

import torch

from rlzoo.rewards import VerifierReward


class CrashingReward(VerifierReward):
    """Raises on its `at`-th call (on rank `rank` only, if given): a job that crashes mid-run."""

    def __init__(self, key: str = "reward", at: int = 2, rank: int | None = None):
        super().__init__(key)
        self.calls, self.at, self.rank = 0, at, rank

    def __call__(self, task, x0, cond):
        self.calls += 1
        if self.calls >= self.at and (self.rank is None or int(os.environ.get("RANK", "0")) == self.rank):
            raise RuntimeError("deliberate crash for the test")
        return super().__call__(task, x0, cond)


class NaNReward(VerifierReward):
    """Returns NaN rewards (on rank `rank` only, if given): a job whose loss goes non-finite."""

    def __init__(self, key: str = "reward", rank: int | None = None):
        super().__init__(key)
        self.rank = rank

    def __call__(self, task, x0, cond):
        scores = super().__call__(task, x0, cond)
        if self.rank is not None and int(os.environ.get("RANK", "0")) != self.rank:
            return scores
        return {**scores, "reward": torch.full_like(scores["reward"], float("nan"))}
