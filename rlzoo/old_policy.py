"""The behaviour ("old") policy and the evaluation EMA (Paper A)."""
from __future__ import annotations

import torch
from torch import nn


def old_policy_decay(schedule: int, step: int) -> float:
    """EMA decay d in old <- d·old + (1 - d)·θ after optimizer step `step`.

    schedule 0: d = 0 (old = current); 1: d = min(0.001·step, 0.5);
    2: d = 0 for 75 steps, then min(0.0075·(step - 75), 0.999).
    """
    if schedule == 0:
        return 0.0
    if schedule == 1:
        return min(0.001 * step, 0.5)
    if schedule == 2:
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    raise ValueError(f"unknown old-policy schedule {schedule!r}; valid: 0, 1, 2")


def eval_ema_decay(step: int, cap: float = 0.9) -> float:
    """Warm-up EMA decay of the DiffusionNFT lineage: min((1 + s)/(10 + s), cap)."""
    return min((1 + step) / (10 + step), cap)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay·target + (1 - decay)·source, over parameters and float buffers."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, 1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        if t.dtype.is_floating_point:
            t.lerp_(s, 1.0 - decay)
        else:
            t.copy_(s)
