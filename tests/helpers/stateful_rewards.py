"""A reward with state and a training hook, like Paper B's R_dm with its critic."""
import torch

from rlzoo.rewards import VerifierReward

COST_PER_ROW = 10  # model evaluations its observe step claims per rollout row


class CountingReward(VerifierReward):
    """The verifier, plus a counter of the rollouts it observed (its "state")."""

    def __init__(self, key: str = "reward"):
        super().__init__(key)
        self.observed = torch.zeros((), dtype=torch.long)

    def observe(self, task, rollout):
        self.observed += 1
        return {"nfe_forward": COST_PER_ROW * rollout.x0.shape[0], "nfe_backward": rollout.x0.shape[0]}

    def state_dict(self):
        return {"observed": self.observed.clone()}

    def load_state_dict(self, state):
        self.observed = state["observed"].clone()
