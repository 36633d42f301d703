"""Single-step transitions x(sigma) -> x(sigma_next) of rectified-flow samplers: pure tensor functions.

Convention (docs/math.md): x_t = (1 - t)·x0 + t·eps, the model predicts v ≈ eps - x0,
dt = sigma_next - sigma < 0. `sigma` / `sigma_next` are floats or per-sample tensors of shape (B,).
Every kernel returns `Step(x_next, log_prob, mean, std, kernel_std)`: `log_prob` (B,) is the
log-density of the given `x_next` if passed, of the drawn one otherwise, reduced by a mean over
dimensions (as in the public FlowGRPO code); `std` is the step's standard deviation and
`kernel_std` the scale FlowGRPO's code returns as `std_dev_t` (for flow_sde the std before its
sqrt(-dt) factor; see `rlzoo.kl.sde_mean_kl`); deterministic kernels return `log_prob=None`,
`std=kernel_std=0`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rlzoo.ops import mean_dims, per_sample, x0_prediction


class Step(NamedTuple):
    x_next: Tensor
    log_prob: Tensor | None
    mean: Tensor
    std: Tensor
    kernel_std: Tensor


def gaussian_log_prob(x_next: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """logp = mean_d( -(x_next - mu)²/(2·std²) - log std - ½·log(2π) )."""
    std = std.expand_as(mean) if std.ndim else std
    return mean_dims(
        -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    )


def _draw(mean: Tensor, std: Tensor, noise: Tensor | None, x_next: Tensor | None) -> Tensor:
    if x_next is not None:
        return x_next
    if noise is None:
        noise = torch.randn_like(mean)
    return mean + std * noise


def euler_step(x, velocity, sigma, sigma_next, *, eta=0.0, noise=None, x_next=None) -> Step:
    """ODE Euler step: x_next = x + v·dt."""
    dt = per_sample(sigma_next, x) - per_sample(sigma, x)
    mean = x + velocity * dt
    zero = torch.zeros((), dtype=x.dtype)
    return Step(mean if x_next is None else x_next, None, mean, zero, zero)


def dpm_solver_2m_step(x: Tensor, x0_pred: Tensor, sigma: float, sigma_next: float,
                       x0_pred_prev: Tensor | None = None, sigma_prev: float | None = None) -> Tensor:
    """One step of the multistep DPM-Solver++(2M) on x0-predictions m = x - sigma·v (flow form:
    alpha = 1 - sigma, lambda = log(alpha) - log(sigma), h = lambda_next - lambda).

    first order (no previous m, sigma_prev = 1 where lambda_prev = -inf so D1 = 0, or sigma_next = 0):
        x_next = (1 - sigma_next)·m + sigma_next·(x - (1 - sigma)·m)/sigma        (DDIM)
    second order, with r0 = h_prev/h and D1 = (m - m_prev)/r0:
        x_next = (sigma_next/sigma)·x - alpha_next·(exp(-h) - 1)·(m + ½·D1)
    The sampler calls it with sigma_next = 0 on its final step, so that step is first order
    (diffusers' `lower_order_final` / `final_sigmas_type="zero"`).
    """
    if x0_pred_prev is None or sigma_prev is None or sigma_prev >= 1.0 or sigma_next <= 0.0:
        return (1 - sigma_next) * x0_pred + sigma_next * (x - (1 - sigma) * x0_pred) / sigma

    def lam(s: float) -> float:
        return math.log(1 - s) - math.log(s)

    h, h_prev = lam(sigma_next) - lam(sigma), lam(sigma) - lam(sigma_prev)
    d1 = (x0_pred - x0_pred_prev) * (h / h_prev)
    return (sigma_next / sigma) * x - (1 - sigma_next) * math.expm1(-h) * (x0_pred + 0.5 * d1)


def flow_sde_step(x, velocity, sigma, sigma_next, *, eta=0.7, noise=None, x_next=None,
                  sigma_max: float | Tensor | None = None) -> Step:
    """FlowGRPO SDE step.

    s   = eta·sqrt(sigma / (1 - sigma))   (at sigma = 1 the denominator uses sigma_max, the
                                           schedule's next sigma; defaults to sigma_next)
    mu  = x·(1 + s²/(2·sigma)·dt) + v·(1 + s²·(1 - sigma)/(2·sigma))·dt
    std = s·sqrt(-dt),   kernel_std = s
    """
    sig = per_sample(sigma, x)
    sig_next = per_sample(sigma_next, x)
    denominator_sigma = torch.where(
        sig == 1.0, per_sample(sigma_next if sigma_max is None else sigma_max, x), sig
    )
    s = eta * torch.sqrt(sig / (1 - denominator_sigma))
    dt = sig_next - sig
    mean = x * (1 + s**2 / (2 * sig) * dt) + velocity * (1 + s**2 * (1 - sig) / (2 * sig)) * dt
    std = s * torch.sqrt(-dt)
    x_next = _draw(mean, std, noise, x_next)
    return Step(x_next, gaussian_log_prob(x_next, mean, std), mean, std, s)


def cps_step(x, velocity, sigma, sigma_next, *, eta=0.7, noise=None, x_next=None) -> Step:
    """Coefficients-preserving SDE step (FlowGRPO `sde_type=cps`).

    std = sigma_next·sin(eta·π/2), x̂0 = x - sigma·v, x̂1 = x + (1 - sigma)·v,
    mu = x̂0·(1 - sigma_next) + x̂1·sqrt(sigma_next² - std²),
    logp = -mean_d((x_next - mu)²)   (the public code drops constants and 1/(2·std²)),
    kernel_std = std (FlowGRPO's std_dev_t for cps).
    """
    sig = per_sample(sigma, x)
    sig_next = per_sample(sigma_next, x)
    std = sig_next * math.sin(eta * math.pi / 2)
    x0_hat = x0_prediction(x, velocity, sigma)
    x1_hat = x + (1 - sig) * velocity
    mean = x0_hat * (1 - sig_next) + x1_hat * torch.sqrt(sig_next**2 - std**2)
    x_next = _draw(mean, std, noise, x_next)
    return Step(x_next, -mean_dims((x_next - mean) ** 2), mean, std, std)


def dance_sde_step(x, velocity, sigma, sigma_next, *, eta=0.3, noise=None, x_next=None) -> Step:
    """DanceGRPO SDE step.

    std = eta·sqrt(sigma - sigma_next), x̂0 = x - sigma·v,
    score = -(x - (1 - sigma)·x̂0)/sigma², mu = x + dt·v - ½·eta²·score·dt, Gaussian logp,
    kernel_std = eta (the std before its sqrt(-dt) factor).
    """
    sig = per_sample(sigma, x)
    sig_next = per_sample(sigma_next, x)
    dt = sig_next - sig
    std = eta * torch.sqrt(sig - sig_next)
    x0_hat = x0_prediction(x, velocity, sigma)
    score = -(x - (1 - sig) * x0_hat) / sig**2
    mean = x + dt * velocity - 0.5 * eta**2 * score * dt
    x_next = _draw(mean, std, noise, x_next)
    return Step(x_next, gaussian_log_prob(x_next, mean, std), mean, std, torch.full_like(std, eta))
