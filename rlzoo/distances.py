"""Distances between two sample sets (Paper B's distribution metrics on low-dimensional samples or
features): pure tensor functions, computed in float64.

    Fréchet:            FD(a, b) = |μ_a − μ_b|² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})
                        (the FID formula, exact for the 2-D points of toy2d; Σ unbiased)
    sliced Wasserstein: SW2(a, b) = sqrt( E_θ ∫_0^1 (F⁻¹_{a·θ}(q) − F⁻¹_{b·θ}(q))² dq ),
                        θ uniform on the unit sphere (`projections` draws), the quantile integral
                        on the midpoints q = (i + ½)/n, n = min(|a|, |b|), of the empirical quantile
                        functions (for equal sizes: the sorted projections matched in order).
"""
from __future__ import annotations

import torch
from torch import Tensor


def frechet_distance(a: Tensor, b: Tensor) -> Tensor:
    """FD between the Gaussians fitted to a (N, D) and b (M, D)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    # Tr((Σ_a Σ_b)^{1/2}) = Σ sqrt(λ_i(Σ_a Σ_b)): the eigenvalues of a product of PSD matrices are real, ≥ 0
    root_trace = torch.linalg.eigvals(cov_a @ cov_b).real.clamp_min(0).sqrt().sum()
    return (mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * root_trace


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256,
                       generator: torch.Generator | None = None) -> Tensor:
    """SW2 between a (N, D) and b (M, D) over `projections` random directions."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    theta = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64).to(a.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    n = min(a.shape[0], b.shape[0])
    q = (torch.arange(n, dtype=torch.float64, device=a.device) + 0.5) / n
    return (_quantiles(a @ theta, q) - _quantiles(b @ theta, q)).square().mean().sqrt()


def _quantiles(x: Tensor, q: Tensor) -> Tensor:
    """The empirical quantile function of each column of x (N, P) at levels q: sorted[floor(q·N)]
    (for |q| = N, the sorted values themselves: the exact W2 between equal-size sets)."""
    index = (q * x.shape[0]).floor().long().clamp_max(x.shape[0] - 1)
    return x.sort(dim=0).values[index]
