"""Regularisers to the reference (base) model, per sample."""
from __future__ import annotations

from torch import Tensor

from rlzoo.ops import mean_dims
from rlzoo.ranges import check
from rlzoo.types import LikelihoodTerm


def velocity_kl(velocity: Tensor, velocity_ref: Tensor) -> Tensor:
    """velocity (Girsanov) KL: kl = mean_d( (v_θ - v_ref)² ), (B, ...) -> (B,)."""
    return mean_dims((velocity - velocity_ref) ** 2)


def sde_mean_kl(mean: Tensor, mean_ref: Tensor, std: Tensor) -> Tensor:
    """KL between Gaussian SDE kernels of a common std: kl = mean_d( (mu_θ - mu_ref)² ) / (2·std²).

    Which std normalises is the `SDEMeanKL.normalizer` knob: the step's own std (the exact KL of
    the two transition Gaussians, as in Paper A's port) or FlowGRPO's `std_dev_t`, the flow_sde
    kernel's s = eta·sqrt(sigma/(1 - sigma)) before the sqrt(-dt) factor (scripts/train_sd3.py),
    which is 1/|dt| times weaker (≈10× at 10 steps, shift 1)."""
    return mean_dims((mean - mean_ref) ** 2 / (2 * std**2))


class KL:
    """A per-sample regulariser on a likelihood term, scaled by `beta` in the loss; `needs` lists
    the LikelihoodTerm fields it reads (checked against the estimator before any compute)."""

    needs_reference = False
    needs = frozenset()

    def __init__(self, beta: float = 0.0):
        self.beta = float(check("kl.beta", beta, 0, note="0 turns the KL off"))

    def __call__(self, term: LikelihoodTerm) -> Tensor | None:
        return None


class NoKL(KL):
    pass


class VelocityKL(KL):
    needs_reference, needs = True, frozenset({"velocity", "velocity_ref"})

    def __call__(self, term: LikelihoodTerm) -> Tensor:
        return velocity_kl(*term.needed("velocity", "velocity_ref"))


class SDEMeanKL(KL):
    """For trajectory estimators: KL of the current vs reference Gaussian transition kernels.

    normalizer: `step` = 2·std² of the step (the exact Gaussian KL; Paper A's port), `kernel` =
    2·kernel_std² (FlowGRPO's code: for flow_sde, std before the sqrt(-dt) factor)."""

    needs_reference, needs = True, frozenset({"mean", "mean_ref", "std", "kernel_std"})
    NORMALIZERS = ("step", "kernel")

    def __init__(self, beta: float = 0.04, normalizer: str = "step"):
        super().__init__(beta)
        if normalizer not in self.NORMALIZERS:
            raise ValueError(f"unknown kl.normalizer {normalizer!r}; valid: {', '.join(self.NORMALIZERS)}")
        self.normalizer = normalizer
        self.needs = frozenset({"mean", "mean_ref", "std" if normalizer == "step" else "kernel_std"})

    def __call__(self, term: LikelihoodTerm) -> Tensor:
        return sde_mean_kl(*term.needed("mean", "mean_ref", "std" if self.normalizer == "step" else "kernel_std"))
