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
class PipelineSchedule:
    """A model family's own sigmas, as its diffusers pipeline samples (taken from diffusers itself,
    not re-typed): the base grid s = linspace(1, 1/K, K), shifted, then a final 0.
    - `image_seq_len` set (FLUX.1's `use_dynamic_shifting`): a resolution-dependent shift, with
      mu = calculate_shift(image_seq_len), linear in the number of packed latent tokens from
      `base_shift` at `base_seq_len` to `max_shift` at `max_seq_len`:
          sigma_k = e^mu / (e^mu + 1/s_k − 1)
    - else a static `shift` (Z-Image's):  sigma_k = shift·s_k / (1 + (shift − 1)·s_k).
    Set by a model family's config (`model.schedule`, which task=t2i hands to `sampler.schedule`)."""

    image_seq_len: int | None = None
    shift: float | None = None
    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15

    def __post_init__(self):
        if (self.image_seq_len is None) == (self.shift is None):
            raise ValueError(f"sampler.schedule takes image_seq_len (a resolution-dependent shift) or shift (a static "
                             f"one), one of them; got image_seq_len={self.image_seq_len}, shift={self.shift}")
        if self.image_seq_len is not None:
            check("sampler.schedule.image_seq_len", self.image_seq_len, 1, integer=True, note="packed latent tokens")
        else:
            check("sampler.schedule.shift", self.shift, 0, low_open=True, note="1 = no shift")

    def sigmas(self, num_steps: int) -> Tensor:
        return torch.tensor(_pipeline_sigmas(int(num_steps), self), dtype=torch.float64).to(torch.float32)


@lru_cache(maxsize=None)
def _pipeline_sigmas(num_steps: int, rule: PipelineSchedule) -> tuple[float, ...]:
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    base = np.linspace(1.0, 1 / num_steps, num_steps).tolist()  # (as FluxPipeline and ZImagePipeline)
    if rule.image_seq_len is None:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=float(rule.shift or 1.0), use_dynamic_shifting=False)
        scheduler.set_timesteps(sigmas=base)
    else:
        mu = calculate_shift(rule.image_seq_len, rule.base_seq_len, rule.max_seq_len, rule.base_shift, rule.max_shift)
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=rule.base_shift,
                                                    max_shift=rule.max_shift, base_image_seq_len=rule.base_seq_len,
                                                    max_image_seq_len=rule.max_seq_len)
        scheduler.set_timesteps(sigmas=base, mu=mu)
    assert scheduler.sigmas is not None  # (set_timesteps made them)
    return tuple(float(s) for s in scheduler.sigmas)
