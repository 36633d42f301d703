"""Noise schedules (sigmas) for rectified-flow samplers."""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=None)
def _flow_match_sigmas(num_steps: int, shift: float) -> tuple[float, ...]:
    # diffusers is the oracle the peers (FlowGRPO, DiffusionNFT, Paper A) sample with; imported
    # here so that cheap commands never load it
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    assert scheduler.sigmas is not None  # (set_timesteps made them)
    return tuple(float(s) for s in scheduler.sigmas)


def shifted_sigmas(num_steps: int, shift: float = 1.0, dtype=torch.float32) -> Tensor:
    """The (K+1,) inference schedule of diffusers' FlowMatchEulerDiscreteScheduler, 1 -> 0.

    With N = 1000 training steps and sigma_min = shift(1/N) (the training schedule's smallest
    sigma, already shifted once):
        sigma_k = shift(linspace(1, sigma_min, K)_k),  shift(s) = shift·s / (1 + (shift - 1)·s),
    then a final 0 is appended. So the last non-zero sigma is small (K = 10: 0.001 at shift 1,
    0.0089 at shift 3), not 1/K. Taken from diffusers itself (`set_timesteps(K)`), not re-typed.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.tensor(_flow_match_sigmas(int(num_steps), float(shift)), dtype=torch.float64).to(dtype)
