"""One velocity model, four views: current (trainable), old (behaviour), reference (frozen base)
and ema (an EMA of the weights, what evaluations measure: `weights=ema`).

Two ways to hold the views, one interface (`velocity`, `velocity_fn`, `update_old`, `update_ema`):
- `Policy` (full fine-tuning; the toy tasks): each view is a copy of the small model. A model that
  owns frozen parts (a text encoder) says which parameters train through `trainable_parameters()`.
- `LoraPolicy` (`model.lora` set; SD3.5): one base model with three peft LoRA adapters — current
  (trainable), old and ema (EMA copies of it) — and the reference is the base with adapters
  disabled. No copy of the base weights exists.

Classifier-free guidance is applied here, so the sampler, the estimators and the KL all see the
same guided velocity: v = v_u + s·(v_c − v_u) when the conditioning carries s > 1.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from rlzoo.policies.full import PRECISIONS, VIEWS, Policy, Precision, check_view, ema_update, trainable_parameters
from rlzoo.policies.guidance import guided_velocity
from rlzoo.policies.lora import (
    ADAPTERS,
    LORA_INITS,
    LORA_WEIGHTS,
    LoraPolicy,
    LoraSettings,
    lora_files,
    lora_module,
    save_lora,
)

__all__ = ["ADAPTERS", "LORA_INITS", "LORA_WEIGHTS", "PRECISIONS", "VIEWS", "LoraPolicy", "LoraSettings", "Policy",
           "Precision", "check_settings", "check_view", "ema_update", "guided_velocity", "lora_files", "lora_module", "make_policy",
           "save_lora", "trainable_parameters"]


def check_settings(model_cfg) -> None:
    """The policy settings of a model config (model.precision / lora / gradient_checkpointing /
    compile / max_batch_size), checked before any model is built: ValueError, one line."""
    get = model_cfg.get
    precision = get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown model.precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    for key in ("gradient_checkpointing", "compile"):
        if not isinstance(get(key, False), bool):
            raise ValueError(f"model.{key} must be true or false, got {get(key)!r}")
    check_attention_backend(get("attention_backend"), get("_target_"))
    rows = get("max_batch_size")
    if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
        raise ValueError(f"model.max_batch_size must be a positive int or null, got {rows!r}")
    lora = get("lora")
    if lora is not None:
        if "target_modules" not in lora:
            raise ValueError("model.lora.target_modules is missing: name the modules to adapt (matched as "
                             "name suffixes); the SD3 model files take conf/shared/lora.yaml's list")
        try:
            LoraSettings.from_config(lora)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model.lora: {' '.join(str(exc).split())}") from None


def check_attention_backend(name: str | None, target: str | None = None) -> None:
    """`model.attention_backend`: one of diffusers' AttentionBackendName values, whose package is
    installed (flash-attn for flash, ...), on a model family whose attention dispatches through them
    (`target`'s `attention_backends`); null leaves the model's default."""
    if name is None:
        return
    if target is not None:
        from hydra.utils import get_class

        family = get_class(target)
        if not getattr(family, "attention_backends", False):
            raise not_dispatched(name, family.__name__)
    try:
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements
    except ImportError:
        raise ValueError("model.attention_backend needs diffusers' attention dispatch (diffusers >= 0.35); "
                         "use model.attention_backend=null") from None
    valid = [b.value for b in AttentionBackendName]
    if name not in valid:
        raise ValueError(f"unknown model.attention_backend {name!r}; valid: null, {', '.join(valid)}")
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (ImportError, RuntimeError, ValueError) as exc:
        raise ValueError(f"model.attention_backend={name}: {' '.join(str(exc).split())}") from None


def not_dispatched(name: str, owner: str) -> ValueError:
    return ValueError(f"model.attention_backend={name}: {owner}'s attention does not go through diffusers' attention "
                      f"backends (FLUX.1's and Z-Image's do); use model.attention_backend=null")


def set_attention_backend(module: nn.Module, name: str) -> None:
    """diffusers' attention backend on every attention processor that dispatches through it; a
    model with none (SD3's JointAttnProcessor2_0 calls torch's SDPA itself) is refused, not
    silently left as it was."""
    if not any(hasattr(getattr(m, "processor", None), "_attention_backend") for m in module.modules()):
        raise not_dispatched(name, type(module).__name__)
    import logging

    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)  # (its "experimental feature" warning, once per view)
    try:
        module.set_attention_backend(name)  # type: ignore[operator]
    finally:
        logger.setLevel(level)


def make_policy(model: nn.Module, model_cfg) -> Policy:
    """The policy a model config asks for: LoRA adapters (`model.lora`) or module copies, with
    `model.precision`, `model.gradient_checkpointing`, `model.attention_backend` and `model.compile`."""
    get = model_cfg.get if hasattr(model_cfg, "get") else (lambda k, d=None: d)
    if get("gradient_checkpointing", False):
        target: Any = lora_module(model)
        if not hasattr(target, "enable_gradient_checkpointing"):
            raise ValueError(f"model.gradient_checkpointing: {type(target).__name__} does not support it")
        target.enable_gradient_checkpointing()
    if get("attention_backend", None) is not None:  # (before the views are copied from the model)
        set_attention_backend(lora_module(model), str(get("attention_backend")))
    lora = get("lora", None)
    precision = get("precision", "fp32") or "fp32"
    if lora is None:
        policy = Policy(model, precision=precision)
    else:
        policy = LoraPolicy(model, LoraSettings.from_config(lora), precision=precision)
    policy.max_batch_size = get("max_batch_size", None)
    if get("compile", False):  # each distinct module once (under LoRA all views share one); the
        # critic, made later by add_critic(), is a copy of the compiled reference (or its adapter)
        views = (v for v in VIEWS if v != "critic")
        for target in {id(m): m for m in (lora_module(policy.module(v)) for v in views)}.values():
            target.compile()
    return policy
