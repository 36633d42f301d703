"""Noise schedules (sigmas) for rectified-flow samplers."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from rlzoo.ranges import check


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


@dataclass(frozen=True)
class DynamicShift:
    """A resolution-dependent shift (FLUX.1's `use_dynamic_shifting`): the schedule FluxPipeline
    samples with, taken from diffusers itself, not re-typed. With mu = calculate_shift(image_seq_len)
    (linear in the number of packed latent tokens, from `base_shift` at `base_seq_len` to
    `max_shift` at `max_seq_len`):
        sigma_k = e^mu / (e^mu + 1/s_k − 1),  s = linspace(1, 1/K, K),
    then a final 0. (The same as a static shift of e^mu, on another base grid than SD3's.)
    Set by a model family's config (`model.schedule`, which task=t2i hands to `sampler.schedule`)."""

    image_seq_len: int
    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    def __post_init__(self):
        check("sampler.schedule.image_seq_len", self.image_seq_len, 1, integer=True, note="packed latent tokens")

    def sigmas(self, num_steps: int) -> Tensor:
        return torch.tensor(_dynamic_sigmas(int(num_steps), self), dtype=torch.float64).to(torch.float32)


@lru_cache(maxsize=None)
def _dynamic_sigmas(num_steps: int, rule: DynamicShift) -> tuple[float, ...]:
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = calculate_shift(rule.image_seq_len, rule.base_seq_len, rule.max_seq_len, rule.base_shift, rule.max_shift)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=rule.base_shift,
                                                max_shift=rule.max_shift, base_image_seq_len=rule.base_seq_len,
                                                max_image_seq_len=rule.max_seq_len)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps).tolist(), mu=mu)  # (as FluxPipeline)
    assert scheduler.sigmas is not None  # (set_timesteps made them)
    return tuple(float(s) for s in scheduler.sigmas)
