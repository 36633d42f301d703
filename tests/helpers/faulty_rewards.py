"""Reward components that fail on purpose, for sweep fault-tolerance tests."""
import torch

from rlzoo.rewards import VerifierReward


class CrashingReward(VerifierReward):
    """Raises on its `at`-th call: a job that crashes mid-run."""

    def __init__(self, key: str = "reward", at: int = 2):
        super().__init__(key)
        self.calls, self.at = 0, at

    def __call__(self, task, x0, cond):
        self.calls += 1
        if self.calls >= self.at:
            raise RuntimeError("deliberate crash for the test")
        return super().__call__(task, x0, cond)


class NaNReward(VerifierReward):
    """Returns NaN rewards: a job whose loss goes non-finite."""

    def __call__(self, task, x0, cond):
        scores = super().__call__(task, x0, cond)
        return {**scores, "reward": torch.full_like(scores["reward"], float("nan"))}
