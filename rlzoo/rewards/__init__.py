"""Reward components: map (task, x0, conditioning) to per-sample rewards.

    rewards = reward(task, x0, cond)   # {"reward": (B,), any other per-sample score to log}

`VerifierReward` (the task's own verifier) lives here; image reward models in `images`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlzoo.types import Conditioning


class Reward:
    """What every reward component has: a call, a check of its files before any compute, and —
    for a reward that learns while the policy trains (Paper B's R_dm and its critic) — a training
    hook and a state. A stateless reward keeps the no-op defaults."""

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ValueError (one line) when a file the reward needs is missing; loads nothing."""

    def attach(self, policy, critic=None) -> None:
        """Called by the trainer once the policy is built, with DMD's critic (rlzoo.critic) when
        some component needs one (Paper B's R_dm reads the teacher and the critic through it)."""

    def observe(self, task, rollout) -> dict[str, int]:
        """Called by the trainer once per iteration with the iteration's rollout (after the rewards
        were computed on it); returns the model evaluations it spent, {"nfe_forward": ...,
        "nfe_backward": ...} summed over rows, which the compute record counts."""
        return {}

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the reward as it was (checkpointed with the policy)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


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


NORMALIZATIONS = ("group", "batch", "none")


def normalized(reward: Tensor, group_ids: Tensor, how: str, eps: float = 1e-6) -> Tensor:
    """(r − mean) / (std + eps) within each prompt group (`group`), over the batch (`batch`), or r."""
    if how == "none":
        return reward
    if how == "batch":
        return (reward - reward.mean()) / (reward.std(unbiased=False) + eps)
    out = torch.empty_like(reward)
    for g in group_ids.unique():
        rows = group_ids == g
        out[rows] = (reward[rows] - reward[rows].mean()) / (reward[rows].std(unbiased=False) + eps)
    return out


class MixReward(Reward):
    """reward = Σ_k w_k · normalize(r_k): several rewards, each normalised before mixing (per prompt
    group by default, so a reward with a larger scale does not drown the others). Each part's raw
    score is returned as `<name>` for logging. `rewards` maps names to reward configs; `tiny`, when
    set, is passed to every part that has that switch."""

    def __init__(self, rewards: dict, weights: dict | None = None, normalize: str = "group",
                 tiny: bool | None = None):
        from rlzoo.config import build

        if not rewards:
            raise ValueError("reward=mix needs reward.rewards: {name: reward config, ...}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown reward.normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
        weights = dict(weights or {name: 1.0 for name in rewards})
        if set(weights) != set(rewards):
            raise ValueError(f"reward.weights names {sorted(weights)} differ from reward.rewards {sorted(rewards)}")
        if tiny is not None:
            rewards = {k: {**v, "tiny": bool(tiny)} if "tiny" in v else v for k, v in rewards.items()}
        self.parts = {name: build(node) for name, node in rewards.items()}
        self.weights = {k: float(v) for k, v in weights.items()}
        self.normalize = normalize

    def check(self) -> None:
        for part in self.parts.values():
            part.check()

    def attach(self, policy, critic=None) -> None:
        for part in self.parts.values():
            part.attach(policy, critic)

    def observe(self, task, rollout) -> dict[str, int]:
        spent: dict[str, int] = {}
        for part in self.parts.values():
            for key, n in part.observe(task, rollout).items():
                spent[key] = spent.get(key, 0) + n
        return spent

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state.get(name, {}))

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        from rlzoo.rewards.images import ImageReward

        images = task.images(x0) if any(isinstance(p, ImageReward) for p in self.parts.values()) else None
        return self._mix({name: (part.score_images(images, cond, task) if isinstance(part, ImageReward)
                                 else part(task, x0, cond))["reward"] for name, part in self.parts.items()}, cond)

    def score_images(self, images: Tensor, cond: Conditioning, task=None) -> dict[str, Tensor]:
        return self._mix({name: part.score_images(images, cond, task)["reward"]
                          for name, part in self.parts.items()}, cond)

    def _mix(self, raw: dict[str, Tensor], cond: Conditioning) -> dict[str, Tensor]:
        groups = cond.group_ids.to(next(iter(raw.values())).device)
        mixed = sum(self.weights[k] * normalized(r.float(), groups, self.normalize) for k, r in raw.items())
        return {"reward": mixed, **raw}
