"""Full fine-tuning (the toy tasks): each view of the velocity model is a copy of the small model,
and the policy's precision settings."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from rlzoo.policies.guidance import guided_velocity
from rlzoo.types import Conditioning

VIEWS = ("current", "old", "reference", "ema", "critic")  # critic: only after add_critic()


PRECISIONS = ("fp32", "tf32", "bf16")


def check_view(which: str) -> str:
    if which not in VIEWS:
        raise ValueError(f"unknown policy view {which!r}; valid: {', '.join(VIEWS)}")
    return which


def trainable_parameters(model: Any) -> list[nn.Parameter]:
    if hasattr(model, "trainable_parameters"):
        return list(model.trainable_parameters())
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class Precision:
    """`model.precision`: fp32; tf32 (fp32 weights, TF32 matmuls on CUDA); bf16 (frozen base weights
    stored in bf16, trainable weights in fp32, forward under bf16 autocast). The velocity always
    comes back in fp32, so sampler steps, log-probs and ELBO terms are computed in fp32."""

    mode: str = "fp32"

    def __post_init__(self):
        if self.mode not in PRECISIONS:
            raise ValueError(f"unknown model.precision {self.mode!r}; valid: {', '.join(PRECISIONS)}")
        if self.mode == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def context(self, device: torch.device):
        if self.mode == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def cast_frozen(self, model: nn.Module) -> None:
        if self.mode == "bf16":
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)


class Policy:
    """Views as module copies (full fine-tuning)."""

    max_batch_size: int | None = None  # rows per model forward; larger batches are split

    def __init__(self, model: nn.Module, reference: nn.Module | None = None, precision: str = "fp32"):
        self.precision = Precision(precision)
        self.current = model
        trainable = {id(p) for p in trainable_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        self.old = self._frozen_copy(model)
        self.reference = self._frozen_copy(model if reference is None else reference)
        self.ema = self._frozen_copy(model)
        self.critic = None  # DMD's fake score (Paper B), made by add_critic()

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        clone = copy.deepcopy(model)
        clone.requires_grad_(False)
        return clone.eval()

    def module(self, which: str) -> nn.Module:
        module = getattr(self, check_view(which))
        if module is None:
            raise ValueError(f"this policy has no {which!r} view (add_critic() makes it)")
        return module

    def add_critic(self) -> list[nn.Parameter]:
        """The "critic" view (DMD's fake score): a trainable copy of the reference (the teacher),
        trained on the same parameters the policy trains; returns them for its optimizer."""
        trainable = {n for n, p in self.current.named_parameters() if p.requires_grad}
        self.critic = copy.deepcopy(self.reference).train()
        for n, p in self.critic.named_parameters():
            p.requires_grad_(n in trainable)
        return self.critic_parameters()

    def critic_parameters(self) -> list[nn.Parameter]:
        return trainable_parameters(self.module("critic"))

    def _forward(self, which: str, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        return self.module(which)(x, sigma, cond)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning, which: str = "current") -> Tensor:
        check_view(which)
        rows = x.shape[0]
        step = rows if not self.max_batch_size else max(1, self.max_batch_size // cond.evaluations_per_velocity)
        if step < rows:  # split the batch so one forward never holds more than max_batch_size rows
            sigma = sigma.expand(rows)
            return torch.cat([self.velocity(x[i:i + step], sigma[i:i + step],
                                            cond.select(torch.arange(i, min(i + step, rows))), which)
                              for i in range(0, rows, step)])
        with self.precision.context(x.device):
            v = guided_velocity(lambda *a: self._forward(which, *a), x, sigma, cond)
        return v.to(x.dtype)

    def velocity_fn(self, which: str) -> Callable[[Tensor, Tensor, Conditioning], Tensor]:
        return lambda x, sigma, cond: self.velocity(x, sigma, cond, which)

    def parameters(self) -> list[nn.Parameter]:
        return trainable_parameters(self.current)

    def train(self) -> None:
        self.current.train()

    @torch.no_grad()
    def update_old(self, decay: float) -> None:
        """old <- decay·old + (1 - decay)·current."""
        ema_update(self.old, self.current, decay)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema <- decay·ema + (1 - decay)·current."""
        ema_update(self.ema, self.current, decay)

    def export_adapter(self, view: str, out, metadata: dict) -> None:
        """Write a view's adapter where diffusers can load it; full fine-tuning has none."""

    @property
    def saved_views(self) -> tuple[str, ...]:
        """The views a checkpoint holds (the reference is the base model, never saved)."""
        return ("current", "old", "ema") + (("critic",) if self.critic is not None else ())

    def state_dict(self) -> dict:
        return {v: self.module(v).state_dict() for v in self.saved_views}

    def load_state_dict(self, state: dict) -> None:
        """Load the saved views; a critic's weights are skipped when this policy has none (an
        evaluation of a distillation run needs only the student)."""
        for view, weights in state.items():
            if not (view == "critic" and self.critic is None):
                self.module(view).load_state_dict(weights)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay·target + (1 - decay)·source, over the source's trainable parameters and
    the float buffers. A frozen parameter (shapes' text encoder) is the same in both and would stay
    so (t + w·(t − t) = t exactly): it is skipped, not lerped for nothing."""
    for t, s in zip(target.parameters(), source.parameters()):
        if s.requires_grad:
            t.lerp_(s.to(t.dtype), 1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        if t.dtype.is_floating_point:
            t.lerp_(s.to(t.dtype), 1.0 - decay)
        else:
            t.copy_(s)
