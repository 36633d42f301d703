"""One velocity model, three views: current (trainable), old (behaviour), reference (frozen base).

Small models use full module copies; a model that owns frozen parts (a text encoder) says which
parameters train through `trainable_parameters()`. An evaluation EMA of the weights is kept too.
"""
from __future__ import annotations

import copy
from typing import Callable

from torch import Tensor, nn

from rlzoo.types import Conditioning

VIEWS = ("current", "old", "reference", "eval")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    if hasattr(model, "trainable_parameters"):
        return list(model.trainable_parameters())
    return [p for p in model.parameters() if p.requires_grad]


class Policy:
    def __init__(self, model: nn.Module, reference: nn.Module | None = None):
        self.current = model
        trainable = {id(p) for p in trainable_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        self.old = self._frozen_copy(model)
        self.reference = self._frozen_copy(model if reference is None else reference)
        self.eval = self._frozen_copy(model)

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        clone = copy.deepcopy(model)
        clone.requires_grad_(False)
        return clone.eval()

    def module(self, which: str) -> nn.Module:
        if which not in VIEWS:
            raise ValueError(f"unknown policy view {which!r}; valid: {', '.join(VIEWS)}")
        return getattr(self, which)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning, which: str = "current") -> Tensor:
        return self.module(which)(x, sigma, cond)

    def velocity_fn(self, which: str) -> Callable[[Tensor, Tensor, Conditioning], Tensor]:
        module = self.module(which)
        return lambda x, sigma, cond: module(x, sigma, cond)

    def parameters(self) -> list[nn.Parameter]:
        return trainable_parameters(self.current)

    def state_dict(self) -> dict:
        return {v: self.module(v).state_dict() for v in ("current", "old", "eval")}

    def load_state_dict(self, state: dict) -> None:
        for view, weights in state.items():
            self.module(view).load_state_dict(weights)
