"""Two tensor helpers every math module uses: per-sample broadcasting and the mean over
non-batch dimensions (docs/math.md writes it mean_d)."""
from __future__ import annotations

import torch
from torch import Tensor


def per_sample(value: float | Tensor, like: Tensor) -> Tensor:
    """A float or a (B,) tensor, broadcastable against `like` of shape (B, ...), in its dtype."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def mean_dims(x: Tensor) -> Tensor:
    """mean_d: the mean over all non-batch dimensions, (B, ...) -> (B,)."""
    return x.flatten(1).mean(dim=1)
