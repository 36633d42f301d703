"""What every math module shares: per-sample broadcasting, the mean over non-batch dimensions
(docs/math.md writes it mean_d), and the rectified-flow identities (docs/math.md, Conventions):

    x_t = (1 - t)·x0 + t·ε        v* = ε - x0        x̂0 = x_t - t·v
"""
from __future__ import annotations

import torch
from torch import Tensor

Float = float | Tensor


def per_sample(value: Float, like: Tensor) -> Tensor:
    """A float or a (B,) tensor, broadcastable against `like` of shape (B, ...), in its dtype."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def mean_dims(x: Tensor) -> Tensor:
    """mean_d: the mean over all non-batch dimensions, (B, ...) -> (B,)."""
    return x.flatten(1).mean(dim=1)


def noised(x0: Tensor, noise: Tensor, t: Float) -> Tensor:
    """x_t = (1 - t)·x0 + t·ε, t a float or of shape (B,)."""
    t = per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """v* = ε - x0: the velocity of the straight path from x0 to ε (what flow matching regresses)."""
    return noise - x0


def x0_prediction(x_t: Tensor, velocity: Tensor, t: Float) -> Tensor:
    """x̂0 = x_t - t·v: the clean sample a velocity predicts at (x_t, t)."""
    return x_t - per_sample(t, x_t) * velocity

