"""Rewards -> advantages, per prompt group (Paper A; docs/math.md)."""
from __future__ import annotations

import torch
from torch import Tensor

from rlzoo.ranges import check


def group_means(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """(B,) the mean reward of each sample's group."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=rewards.dtype, device=rewards.device)
    sums.index_add_(0, inverse, rewards)
    counts = torch.bincount(inverse).to(rewards.dtype)
    return (sums / counts)[inverse]


def group_stds(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """(B,) the population std of each sample's group."""
    centred = rewards - group_means(rewards, group_ids)
    return group_means(centred**2, group_ids).sqrt()


def group_advantage(rewards: Tensor, group_ids: Tensor, std: str = "global", eps: float = 1e-4) -> Tensor:
    """A = (R - mean_group(R)) / (std(R) + eps); std over the whole batch ("global", population
    std, Paper A's default) or within each group ("group")."""
    centred = rewards - group_means(rewards, group_ids)
    if std == "global":
        scale = rewards.std(unbiased=False)
    elif std == "group":
        scale = group_stds(rewards, group_ids)
    else:
        raise ValueError(f"unknown advantage std {std!r}; valid: global, group")
    return centred / (scale + eps)


def exact_advantage(rewards: Tensor, group_ids: Tensor, c: float = 0.1) -> Tensor:
    """A = c·(R - mean_group(R)), no std normalisation."""
    return c * (rewards - group_means(rewards, group_ids))


def exact_scale(alpha: float, beta: float) -> float:
    """Paper A's c = beta/alpha: the objective is beta·[(R - mu)/alpha·log pi - KL], so the
    reward-vs-KL balance is set by the reward temperature alpha alone; c = 1 without a KL
    (beta = 0), as in its code."""
    return beta / alpha if beta > 0 else 1.0


def global_std_advantage(rewards: Tensor, group_ids: Tensor, eps: float = 1e-4) -> Tensor:
    """A = (R - mean(R)) / (std(R) + eps) over the whole batch, ignoring prompt groups."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + eps)


def nft_mapping(advantage: Tensor, adv_clip: float = 5.0) -> Tensor:
    """DiffusionNFT's optimality probability r = clip( clip(A, ±5)/5/2 + 0.5, 0, 1 )."""
    return (advantage.clamp(-adv_clip, adv_clip) / adv_clip / 2 + 0.5).clamp(0, 1)


class Advantage:
    min_group_size = 1  # the smallest train.group_size for which the advantage is not identically 0

    def check_run(self, run) -> None:
        """A group advantage of a group of one is identically 0."""
        if run.group_size < self.min_group_size:
            raise ValueError(f"train.group_size={run.group_size} gives every sample a zero advantage with advantage="
                             f"{run.names.get('advantage', '?')} (a group's own mean is subtracted); use "
                             f"train.group_size>={self.min_group_size} or advantage=global_std")

    def __call__(self, rewards: Tensor, group_ids: Tensor) -> Tensor:
        raise NotImplementedError


class GroupAdvantage(Advantage):

    min_group_size = 2  # a group of one is its own mean: every advantage would be 0

    def __init__(self, std: str = "global", eps: float = 1e-4):
        if std not in ("global", "group"):
            raise ValueError(f"unknown advantage std {std!r}; valid: global, group")
        self.std, self.eps = std, float(check("advantage.eps", eps, 0, low_open=True))

    def __call__(self, rewards, group_ids):
        return group_advantage(rewards, group_ids, self.std, self.eps)


class ExactAdvantage(Advantage):
    """A = c·(R - group mean) with c = beta/alpha (`exact_scale`): `alpha` the reward
    temperature, `beta` the KL's coefficient (the YAML ties it to kl.beta)."""


    min_group_size = 2  # a group of one is its own mean: every advantage would be 0

    def __init__(self, alpha: float = 1e-3, beta: float = 1e-4):
        self.alpha = float(check("advantage.alpha", alpha, 0, low_open=True, note="the reward temperature"))
        self.beta = float(check("advantage.beta", beta, 0, note="the KL's coefficient, kl.beta"))
        self.c = exact_scale(self.alpha, self.beta)

    def __call__(self, rewards, group_ids):
        return exact_advantage(rewards, group_ids, self.c)


class GlobalStdAdvantage(Advantage):

    def __init__(self, eps: float = 1e-4):
        self.eps = float(check("advantage.eps", eps, 0, low_open=True))

    def __call__(self, rewards, group_ids):
        return global_std_advantage(rewards, group_ids, self.eps)
