"""Regularisers to the reference (base) model, per sample."""
from __future__ import annotations

from torch import Tensor

from rlzoo.samplers.kernels import mean_dims
from rlzoo.types import LikelihoodTerm


def velocity_kl(velocity: Tensor, velocity_ref: Tensor) -> Tensor:
    """velocity (Girsanov) KL: kl = mean_d( (v_θ - v_ref)² ), (B, ...) -> (B,)."""
    return mean_dims((velocity - velocity_ref) ** 2)


def sde_mean_kl(mean: Tensor, mean_ref: Tensor, std: Tensor) -> Tensor:
    """KL between the Gaussian SDE kernels: kl = mean_d( (mu_θ - mu_ref)² ) / (2·std²)."""
    return mean_dims((mean - mean_ref) ** 2 / (2 * std**2))


class KL:
    name = "none"
    needs_reference = False

    def __init__(self, beta: float = 0.0):
        self.beta = float(beta)

    def __call__(self, term: LikelihoodTerm) -> Tensor | None:
        return None


class NoKL(KL):
    name = "none"


class VelocityKL(KL):
    name, needs_reference = "velocity", True

    def __call__(self, term: LikelihoodTerm) -> Tensor:
        return velocity_kl(term.velocity, term.velocity_ref)


class SDEMeanKL(KL):
    """For trajectory estimators: KL of the current vs reference Gaussian transition kernels."""

    name, needs_reference = "sde_mean", True

    def __call__(self, term: LikelihoodTerm) -> Tensor:
        return sde_mean_kl(term.extras["mean"], term.extras["mean_ref"], term.extras["std"])
