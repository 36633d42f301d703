"""Classifier-free guidance, applied by the policy to every view, so the sampler, the estimators
and the KL all see the same guided velocity."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlzoo.types import Conditioning


def guided_velocity(model: Callable, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
    """The model's velocity, with classifier-free guidance when `cond` asks for it:
    v = v_u + s·(v_c − v_u), both halves in one batched forward of 2B rows."""
    if not cond.guided:
        return model(x, sigma, cond)
    negative = cond.negative if cond.negative is not None else {}  # (guided: the empty prompt's inputs)
    both = Conditioning(prompts=[""] * len(cond) + list(cond.prompts),
                        inputs={k: torch.cat([negative[k], v]) for k, v in cond.inputs.items()},
                        prompt_ids=torch.cat([cond.prompt_ids, cond.prompt_ids]),
                        group_ids=torch.cat([cond.group_ids, cond.group_ids]))
    sigma = sigma.expand(x.shape[0])
    v_uncond, v_cond = model(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
    return v_uncond + cond.guidance_scale * (v_cond - v_uncond)
