"""Noise schedules (sigmas) for rectified-flow samplers."""
from __future__ import annotations

import torch
from torch import Tensor


def shifted_sigmas(num_steps: int, shift: float = 1.0, dtype=torch.float32) -> Tensor:
    """The (K+1,) schedule of diffusers' FlowMatchEulerDiscreteScheduler, from 1 to 0.

    sigma(t) = shift·t / (1 + (shift - 1)·t),  t = linspace(1, 0, K + 1).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    sigma = shift * t / (1.0 + (shift - 1.0) * t)
    return sigma.to(dtype)
