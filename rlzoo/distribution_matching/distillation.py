"""Distribution matching (Paper B, arXiv 2603.28460, and its DMD / DMD2 baseline): pure tensor math.

Notation: a student sample x (B, ...); at a noise level t, x_t = (1 - t)·x + t·ε; the frozen teacher
("real score") and the online critic ("fake score", trained by flow matching on student samples)
each predict x̂0 = x_t - t·v.

    DMD gradient (DMD2's code):   g = nan_to_num( (x̂_fake - x̂_real) / mean_d |x - x̂_real| )
    DMD loss:                     L = ½ · mean_{b,d}( (x - sg(x - g))² )     so ∂L/∂x = g / (B·D)
    critic loss (flow matching):  L = mean_{b,d}( (v_fake(x_t, t) - (ε - x))² )
    alternative R_dm (dmd_norm):  R(x) = −sqrt(mean_d g²)
    R_dm (INFERRED, experimental): R_dm(x) = ELBO_teacher(x) - ELBO_critic(x), both terms with the
        same ε and t: a Monte-Carlo estimate of log p_teacher(x) - log p_student(x) (the critic
        tracks the student's distribution). Paper B's exact equation was not available to us.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlzoo.estimators.elbo import elbo_term
from rlzoo.ops import mean_dims, per_sample, velocity_target
from rlzoo.rng import Draws, as_draws


def dmd_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """g = nan_to_num((x̂_fake - x̂_real) / mean_d |x - x̂_real|), per sample; no clamp (0/0 -> 0)."""
    scale = per_sample(mean_dims((x - x0_real).abs()), x)
    return torch.nan_to_num((x0_fake - x0_real) / scale)


def dmd_gradient_norm_reward(x: Tensor, x0_real: Tensor, x0_fake: Tensor) -> Tensor:
    """R(x) = −sqrt(mean_d g²), the alternative R_dm: minus the RMS of DMD's gradient, (B, ...) -> (B,)."""
    return -mean_dims(dmd_gradient(x, x0_real, x0_fake) ** 2).sqrt()


def dmd_loss(x: Tensor, gradient: Tensor) -> Tensor:
    """½·mean((x - sg(x - g))²): a scalar whose gradient on x is g / (B·D)."""
    target = (x - gradient).detach()
    return 0.5 * ((x - target) ** 2).mean()


def flow_matching_loss(velocity: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """The critic's denoising loss: mean((v(x_t, t) - (ε - x0))²) (the pretraining loss)."""
    return ((velocity - velocity_target(x0, noise)) ** 2).mean()


def distribution_matching_reward(x0: Tensor, noise: Tensor, t: Tensor, velocity_teacher: Tensor,
                                 velocity_critic: Tensor, weighting: str = "exact") -> Tensor:
    """R_dm per sample (INFERRED): ELBO term of the teacher minus that of the critic at the same
    (ε, t), (B, ...) -> (B,). Positive where the teacher finds x likelier than the student does."""
    return elbo_term(x0, noise, t, velocity_teacher, weighting) - elbo_term(x0, noise, t, velocity_critic, weighting)


def check_teacher(run, user: str) -> None:
    """Distillation needs a teacher with trained weights (rlzoo.types.RunContext.pretrained_teacher)."""
    if not run.pretrained_teacher:
        raise ValueError(f"{user} distils from the base model as teacher, but model.teacher=false ({run.model} has "
                         f"random weights); use a pretrained model (task=toy2d, task=shapes, model=sd35m) or "
                         f"model.teacher=true for a plumbing test")


def check_t_range(t_range, key: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in t_range)
    if not 0 < lo < hi < 1:
        raise ValueError(f"{key} must satisfy 0 < lo < hi < 1, got {list(t_range)!r}")
    return lo, hi


def noise_and_t(x0: Tensor, t_range: tuple[float, float], generator: Draws | torch.Generator) -> tuple[Tensor, Tensor]:
    """Fresh ε ~ N(0, I) like x0 and t ~ U(t_range) per row."""
    lo, hi = t_range
    draws = as_draws(generator)
    noise = draws.randn(x0.shape, dtype=x0.dtype).to(x0.device)
    t = (lo + (hi - lo) * draws.rand((x0.shape[0],), dtype=x0.dtype)).to(x0.device)
    return noise, t
