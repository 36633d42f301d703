"""Reward components: map (task, x0, conditioning) to per-sample rewards.

    rewards = reward(task, x0, cond)   # {"reward": (B,), any other per-sample score to log}

`VerifierReward` (the task's own verifier) lives here; image reward models in `images`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rlzoo.ranges import check
from rlzoo.types import Conditioning, Cost, SelfChecking


class Reward:
    """What every reward component has: a call, a check of its files before any compute, and —
    for a reward that learns while the policy trains (Paper B's R_dm and its critic) — a training
    hook and a state. A stateless reward keeps the no-op defaults."""

    scores_images = False  # True: it scores decoded images, `score_images(images, cond, task)` (ImageReward)
    needs_critic = False  # True: it reads DMD's critic (Paper B's R_dm), given by `use_critic`
    # True: it draws random numbers, and takes them from the run as `draws=` (rlzoo.rng: its own
    # stream, or with train.rng=keyed each row's, so a row's numbers do not depend on how the batch
    # is split over processes); `score` below calls it so
    takes_draws = False
    # True: when it trains the policy on a task with its own verifier, its mean on held-out samples
    # is the evaluation's headline `reward` (the verifier's beside it as `verifier`); not for the
    # verifier itself, a mix of normalised rewards or a learnt one (R_dm), whose held-out means
    # say nothing on their own (rlzoo.config.build.use_headline)
    headline = True

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        raise NotImplementedError

    @property
    def needs_images(self) -> bool:
        """It (or a part of it) scores pictures: the task must make images."""
        return self.scores_images

    def check(self) -> None:
        """Raise ValueError (one line) when a file the reward needs is missing; loads nothing."""

    def use_critic(self, critic) -> None:
        """A reward that `needs_critic` (Paper B's R_dm) receives the run's critic here, when the
        components are built; it reads the teacher and the critic through it."""

    def cost(self, rows: int) -> Cost:
        """The model evaluations a call on `rows` samples spends (a reward made of the policy's
        own models, like R_dm), which the compute record counts; none for a verifier or an
        external reward model."""
        return Cost()

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the reward as it was (checkpointed with the policy)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def score(reward, task, x0: Tensor, cond: Conditioning, draws=None, images: Tensor | None = None) -> dict[str, Tensor]:
    """`reward`'s scores of the samples `x0`. A reward that `scores_images` scores the decoded
    `images` (decoded here when not given: several rewards of one batch share one decode); one
    that `takes_draws` gets the run's random numbers for these rows (`draws`, rlzoo.rng); any other
    is called as reward(task, x0, cond) (a user's reward needs no base class)."""
    if getattr(reward, "scores_images", False):
        return reward.score_images(task.images(x0) if images is None else images, cond, task)
    return reward(task, x0, cond, draws=draws) if getattr(reward, "takes_draws", False) else reward(task, x0, cond)


class VerifierReward(Reward):
    """The task's own verifier. `key` picks the score used as the reward (e.g. `strict`, `soft`);
    `reward` is the task's primary held-out reward. Every score is returned for logging."""

    headline = False  # (the task's own score is the headline already)

    def __init__(self, key: str = "reward"):
        self.key = key

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        scores = task.score(x0, cond)
        if self.key not in scores:
            raise ValueError(f"reward.key={self.key!r} is not a score of task {task.name!r}; "
                             f"valid: {', '.join(sorted(scores))}")
        return {**scores, "reward": scores[self.key]}


NORMALIZATIONS = ("group", "batch", "running", "none")


def normalized(reward: Tensor, group_ids: Tensor, how: str, eps: float = 1e-6) -> Tensor:
    """(r − mean) / (std + eps) within each prompt group (`group`), over the batch (`batch`), or r."""
    mean, std = reward_mean_std(reward, group_ids, how)
    return (reward - mean) / (std + eps)


def reward_mean_std(reward: Tensor, group_ids: Tensor, how: str) -> tuple[Tensor, Tensor]:
    """Per row, the mean and std a normalisation uses: its group's (`group`), the batch's (`batch`),
    or 0 and 1 (`none`)."""
    if how == "none":
        return torch.zeros_like(reward), torch.ones_like(reward)
    if how == "batch":
        return reward.mean().expand_as(reward), reward.std(unbiased=False).expand_as(reward)
    mean, std = torch.empty_like(reward), torch.empty_like(reward)
    for g in group_ids.unique():
        rows = group_ids == g
        mean[rows], std[rows] = reward[rows].mean(), reward[rows].std(unbiased=False)
    return mean, std


class MixReward(Reward):
    """reward = Σ_k w_k · (r_k − m_k) / (s_k + eps): several rewards, each normalised before mixing
    (per prompt group by default, so a reward with a larger scale does not drown the others).
    m_k, s_k: the group's mean and std (`group`), the batch's (`batch`), running means over
    iterations (`running`, an EMA with `momentum`, checkpointed), or 0 and 1 (`none`).

    The weight each raw reward effectively gets, w_k / (s_k + eps), adapts to that reward's current
    spread: these are the adaptive weights (Paper B's GNDMR mixes R_dm with external rewards so;
    its exact rule was not available, this reading is INFERRED) and are returned as `weight_<name>`
    (per row, so the metrics log their mean every iteration). Each part's raw score is returned as
    `<name>`. `rewards` maps names to rewards (built from their configs before the mix, by Hydra's
    recursive instantiation); `tiny`, when set, goes to every part that scores images."""

    headline = False  # (normalised per group: its held-out mean is ~0 whatever the samples)

    def __init__(self, rewards: dict[str, Reward], weights: dict | None = None, normalize: str = "group",
                 tiny: bool | None = None, momentum: float = 0.9):
        if not rewards:
            raise ValueError("reward=mix needs reward.rewards: {name: reward config, ...}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown reward.normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
        weights = dict(weights or {name: 1.0 for name in rewards})
        if set(weights) != set(rewards):
            raise ValueError(f"reward.weights names {sorted(weights)} differ from reward.rewards {sorted(rewards)}")
        not_rewards = sorted(name for name, part in rewards.items() if not isinstance(part, Reward))
        if not_rewards:
            raise ValueError(f"reward.rewards.{not_rewards[0]} is not a reward component (a config with a _target_)")
        self.parts: dict[str, Any] = dict(rewards)  # (image parts take `tiny` and `score_images`)
        if tiny is not None:  # the image rewards build their models lazily, so the switch still applies
            for part in self.parts.values():
                if part.scores_images:
                    part.tiny = bool(tiny)
        self.scores_images = all(part.scores_images for part in self.parts.values())
        self.weights = {k: float(check(f"reward.weights.{k}", v, 0)) for k, v in weights.items()}
        if not any(self.weights.values()):
            raise ValueError("reward.weights are all 0: the mixed reward, and every advantage, would be 0")
        self.normalize = normalize
        self.min_group_size = 2 if normalize == "group" else 1  # a group of one normalises to 0
        if not 0 <= float(momentum) < 1:
            raise ValueError(f"reward.momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.running: dict[str, Tensor] = {}  # name -> (mean, second moment), for normalize=running

    @property
    def needs_critic(self) -> bool:
        return any(part.needs_critic for part in self.parts.values())

    @property
    def needs_images(self) -> bool:
        return any(part.needs_images for part in self.parts.values())

    def check_run(self, run) -> None:
        """Its parts' own rules; per-group statistics need groups of two; batch or running
        statistics under torchrun would be each process's rows, not the batch's."""
        for part in self.parts.values():
            if isinstance(part, SelfChecking):
                part.check_run(run)
        if run.group_size < self.min_group_size:
            raise ValueError(f"train.group_size={run.group_size} gives every sample a zero advantage with "
                             f"reward={run.names.get('reward', 'mix')} (reward.normalize=group) (a group's own mean "
                             f"is subtracted); use train.group_size>={self.min_group_size}")
        if self.normalize in ("batch", "running") and run.world > 1:
            raise ValueError(f"reward.normalize={self.normalize} under torchrun with {run.world} processes "
                             f"(WORLD_SIZE={run.world}): each process would normalise by its own rows' statistics, "
                             f"not the batch's; use reward.normalize=group (per prompt group, the same on any number "
                             f"of processes), or one process")

    @property
    def takes_draws(self) -> bool:
        return any(part.takes_draws for part in self.parts.values())

    def check(self) -> None:
        for part in self.parts.values():
            part.check()

    def use_critic(self, critic) -> None:
        for part in self.parts.values():
            if part.needs_critic:
                part.use_critic(critic)

    def cost(self, rows: int) -> Cost:
        return sum((part.cost(rows) for part in self.parts.values()), Cost())

    def state_dict(self) -> dict:
        return {"parts": {name: part.state_dict() for name, part in self.parts.items()},
                "running": {k: v.clone() for k, v in self.running.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state.get("parts", {}).get(name, {}))
        self.running = {k: v.clone() for k, v in state.get("running", {}).items()}

    def __call__(self, task, x0: Tensor, cond: Conditioning, draws=None) -> dict[str, Tensor]:
        images = task.images(x0) if any(p.scores_images for p in self.parts.values()) else None  # decoded once

        return self._mix({name: score(part, task, x0, cond, draws, images)["reward"]
                          for name, part in self.parts.items()}, cond)

    def score_images(self, images: Tensor, cond: Conditioning, task=None) -> dict[str, Tensor]:
        return self._mix({name: part.score_images(images, cond, task)["reward"]
                          for name, part in self.parts.items()}, cond)

    def _mix(self, raw: dict[str, Tensor], cond: Conditioning, eps: float = 1e-6) -> dict[str, Tensor]:
        groups = cond.group_ids.to(next(iter(raw.values())).device)
        out: dict[str, Any] = {}
        mixed: Any = 0.0  # (a tensor after the first part)
        for name, r in raw.items():
            r = r.float()
            mean, std = self._running(name, r) if self.normalize == "running" else \
                reward_mean_std(r, groups, self.normalize)
            weight = self.weights[name] / (std + eps)  # the adaptive weight on the raw reward
            mixed = mixed + weight * (r - mean)
            out[f"weight_{name}"] = weight
        return {"reward": mixed, **raw, **out}

    def _running(self, name: str, r: Tensor) -> tuple[Tensor, Tensor]:
        """EMA of the batch mean and second moment (the first batch starts it)."""
        batch = torch.stack([r.mean(), r.square().mean()]).detach().cpu().double()
        state = self.running.get(name)
        state = batch if state is None else self.momentum * state + (1 - self.momentum) * batch
        self.running[name] = state
        mean, var = float(state[0]), max(float(state[1] - state[0] ** 2), 0.0)
        return torch.full_like(r, mean), torch.full_like(r, var ** 0.5)
