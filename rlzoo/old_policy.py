"""The behaviour ("old") policy and the evaluation EMA (Paper A)."""
from __future__ import annotations

OLD_POLICY_SCHEDULES = (0, 1, 2, 3)


def old_policy_decay(schedule: int, step: int) -> float:
    """EMA decay d in old <- d·old + (1 - d)·θ after optimizer step `step`.

    schedule 0: d = 0 (old = current); 1: d = min(0.001·step, 0.5);
    2: d = 0 for 75 steps, then min(0.0075·(step - 75), 0.999);
    3: d = 0 for 10 steps, then min(0.01·(step - 10), 0.5).
    (DiffusionNFT's `return_decay`; 3 is in Paper A's copy of it.)
    """
    if schedule == 0:
        return 0.0
    if schedule == 1:
        return min(0.001 * step, 0.5)
    if schedule == 2:
        return 0.0 if step < 75 else min(0.0075 * (step - 75), 0.999)
    if schedule == 3:
        return 0.0 if step < 10 else min(0.01 * (step - 10), 0.5)
    raise ValueError(f"unknown old-policy schedule {schedule!r}; valid: {', '.join(map(str, OLD_POLICY_SCHEDULES))}")


def eval_ema_decay(step: int, cap: float = 0.9) -> float:
    """Warm-up EMA decay of the DiffusionNFT lineage: min((1 + s)/(10 + s), cap)."""
    return min((1 + step) / (10 + step), cap)
