"""LoRA policies (SD3.5): one base model with peft adapters as views, the settings of `model.lora`,
and the LoRA files diffusers loads."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from rlzoo.policies.full import Policy, Precision, check_view
from rlzoo.ranges import check

# ----------------------------------------------------------------------------------- LoRA
# peft adapter names of the three trained views
ADAPTERS = {"current": "current", "old": "old", "ema": "ema"}


TRAINABLE_VIEWS = ("current", "critic")  # the views whose adapters take gradients


LORA_INITS = ("gaussian", "default")  # peft: gaussian A, or kaiming A; B = 0 in both


@dataclass(kw_only=True)
class LoraSettings:
    """`model.lora`: rank, alpha, init and the modules to adapt. The one list of targets is
    conf/shared/lora.yaml (Paper A's: the joint attention's q/k/v/out and added projections), so
    there is no default here. Targets match module names as suffixes, so `attn.to_q` adapts
    `transformer_blocks.N.attn.to_q` and not the dual-attention `attn2.to_q`."""

    target_modules: list[str]
    rank: int = 32
    alpha: float = 64.0
    init: str = "gaussian"

    @classmethod
    def from_config(cls, node) -> LoraSettings:
        """The settings of `model.lora` (a config node or a dict)."""
        from omegaconf import DictConfig, OmegaConf

        values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        return cls(**cast(dict, values))

    def __post_init__(self):
        check("model.lora.rank", self.rank, 1, integer=True)
        check("model.lora.alpha", self.alpha, 0, low_open=True, note="the LoRA scale is alpha / rank")
        if self.init not in LORA_INITS:
            raise ValueError(f"unknown model.lora.init {self.init!r}; valid: {', '.join(LORA_INITS)}")
        if not self.target_modules:
            raise ValueError("model.lora.target_modules is empty")

    def peft_config(self):
        from peft import LoraConfig

        init = {"gaussian": "gaussian", "default": True}[self.init]
        alpha: Any = float(self.alpha)  # (peft annotates an int and scales by alpha / rank as a float)
        return LoraConfig(r=int(self.rank), lora_alpha=alpha, init_lora_weights=init,
                          target_modules=list(self.target_modules))

    def check_targets(self, module_names: list[str]) -> None:
        """ValueError naming the targets that match no module name (peft's rule: equal, or a
        suffix after a dot), with examples of names that would."""
        missing = [t for t in self.target_modules
                   if not any(n == t or n.endswith("." + t) for n in module_names)]
        if missing:
            examples = sorted({n.split(".", 2)[-1] for n in module_names if n.count(".") >= 2})[:8]
            raise ValueError(f"model.lora.target_modules {missing} match no module of the model "
                             f"(targets match module names as suffixes, e.g. {', '.join(examples)})")


LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the name diffusers' LoRA loader looks for


def lora_files(lora_state: dict, settings, metadata: dict | None = None) -> dict[str, bytes]:
    """A LoRA as diffusers writes one: {pytorch_lora_weights.safetensors: bytes, rlzoo.json: bytes},
    keys `transformer.<module>.lora_A/B.weight`, with the adapter's rank, alpha and targets as
    metadata, so `StableDiffusion3Pipeline.load_lora_weights(dir)` restores the trained velocity
    exactly. diffusers writes into a temporary directory of its own (removed with its contents);
    the caller decides where the bytes go."""
    import tempfile

    from diffusers import StableDiffusion3Pipeline

    tensors = {k: v.detach().float().cpu().contiguous().clone() for k, v in lora_state.items()}
    with tempfile.TemporaryDirectory(prefix="rlzoo-lora-") as scratch:
        StableDiffusion3Pipeline.save_lora_weights(
            scratch, transformer_lora_layers=tensors, weight_name=LORA_WEIGHTS,
            transformer_lora_adapter_metadata={"r": int(settings.rank), "lora_alpha": float(settings.alpha),
                                               "target_modules": list(settings.target_modules)})
        files = {LORA_WEIGHTS: (Path(scratch) / LORA_WEIGHTS).read_bytes()}
    if metadata:
        files["rlzoo.json"] = json.dumps(metadata, indent=2).encode()
    return files


def save_lora(lora_state: dict, settings, out: Path, metadata: dict | None = None) -> Path:
    """Write a LoRA (`lora_files`) into a directory rlzoo owns (a run's `lora/`), each file
    atomically; nothing else in `out` is touched."""
    from rlzoo.runs.files import atomic_write_bytes

    for name, data in lora_files(lora_state, settings, metadata).items():
        atomic_write_bytes(Path(out) / name, data)
    return Path(out) / LORA_WEIGHTS


def lora_module(model: Any) -> nn.Module:
    """The part of a velocity model that LoRA adapts (its transformer), or the model itself."""
    return model.lora_module() if hasattr(model, "lora_module") else model


class LoraPolicy(Policy):
    """Views as LoRA adapters on one frozen base model (the reference = adapters disabled)."""

    def __init__(self, model: nn.Module, lora: LoraSettings, precision: str = "fp32"):
        from peft import inject_adapter_in_model

        self.precision = Precision(precision)
        self.lora = lora
        self.model = model
        model.requires_grad_(False)
        target = lora_module(model)
        lora.check_targets([n for n, _ in target.named_modules()])
        with warnings.catch_warnings():  # peft warns that a model holds several adapters: it is meant to
            warnings.simplefilter("ignore")
            for adapter in ADAPTERS.values():
                inject_adapter_in_model(lora.peft_config(), target, adapter_name=adapter)
        self.adapter_params = {view: self._params_of(target, adapter) for view, adapter in ADAPTERS.items()}
        with torch.no_grad():  # old and ema start as exact copies of the current adapter
            for view in ("old", "ema"):
                for name, p in self.adapter_params[view].items():
                    p.copy_(self.adapter_params["current"][name])
        self.precision.cast_frozen(model)
        for view, params in self.adapter_params.items():
            for p in params.values():
                p.data = p.data.float()
        self._tuner_layers: list[Any] = [m for m in target.modules() if _is_tuner_layer(m)]
        self._active = None
        self._activate("current")

    @property
    def critic(self):  # the critic is an adapter here, not a module copy
        return self.adapter_params.get("critic")

    def add_critic(self) -> list[nn.Parameter]:
        """The "critic" view as a fourth adapter, with lora_B = 0 so it starts equal to the
        reference (the teacher) whatever model.lora.init is; returns its parameters."""
        from peft import inject_adapter_in_model

        target = lora_module(self.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inject_adapter_in_model(self.lora.peft_config(), target, adapter_name="critic")
        params = self._params_of(target, "critic")
        with torch.no_grad():
            for name, p in params.items():
                p.data = p.data.float()
                if "lora_B" in name:
                    p.zero_()
        self.adapter_params["critic"] = params
        self._active = None
        self._activate("current")
        return self.critic_parameters()

    def critic_parameters(self) -> list[nn.Parameter]:
        if self.critic is None:
            raise ValueError("this policy has no 'critic' view (add_critic() makes it)")
        return list(self.critic.values())

    @staticmethod
    def _params_of(target: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
        """{view-neutral name: parameter} of one adapter, in a fixed order."""
        token = f".{adapter}."
        return {n.replace(token, "."): p for n, p in target.named_parameters(remove_duplicate=False)
                if "lora_" in n and token in n}

    def _activate(self, which: str) -> None:
        """Route the forward through one adapter (or none for the reference). peft's switches
        also flip requires_grad; the flags are put back so only the current adapter trains, and
        so a switch between a forward and its backward never drops the current adapter's gradient."""
        if which == self._active:
            return
        for layer in self._tuner_layers:
            if which == "reference":
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(ADAPTERS.get(which, which))
        for view, params in self.adapter_params.items():
            for p in params.values():
                p.requires_grad_(view in TRAINABLE_VIEWS)
        self._active = which

    def module(self, which: str) -> nn.Module:
        if check_view(which) == "critic":
            self.critic_parameters()  # raises when there is none
        self._activate(which)
        return self.model

    def _forward(self, which, x, sigma, cond):
        self._activate(which)
        return self.model(x, sigma, cond)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapter_params["current"].values())

    def train(self) -> None:
        self.model.train()

    @torch.no_grad()
    def _ema(self, view: str, decay: float) -> None:
        for name, p in self.adapter_params[view].items():
            p.lerp_(self.adapter_params["current"][name], 1.0 - decay)

    def update_old(self, decay: float) -> None:
        self._ema("old", decay)

    def update_ema(self, decay: float) -> None:
        self._ema("ema", decay)

    def export_adapter(self, view: str, out, metadata: dict) -> None:
        """<out>/pytorch_lora_weights.safetensors: the view's LoRA as diffusers loads it."""
        save_lora(self.adapter_state_dict(view), self.lora, out, metadata)

    def adapter_state_dict(self, view: str = "current") -> dict[str, Tensor]:
        """One view's LoRA weights in peft's adapter-free naming (what diffusers' LoRA loader reads)."""
        return {name: p.detach() for name, p in self.adapter_params[view].items()}

    def state_dict(self) -> dict:
        return {view: {k: v.clone() for k, v in self.adapter_state_dict(view).items()}
                for view in self.saved_views}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for view, weights in state.items():
                if view == "critic" and self.critic is None:
                    continue  # (as Policy.load_state_dict)
                params = self.adapter_params[view]
                if set(weights) != set(params):
                    raise ValueError(f"checkpoint's {view} LoRA weights do not match model.lora")
                for name, value in weights.items():
                    params[name].copy_(value)


def _is_tuner_layer(module: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)
