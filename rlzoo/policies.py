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

import contextlib
import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from rlzoo.ranges import check
from rlzoo.types import Conditioning

VIEWS = ("current", "old", "reference", "ema", "critic")  # critic: only after add_critic()
PRECISIONS = ("fp32", "tf32", "bf16")


def check_view(which: str) -> str:
    if which not in VIEWS:
        raise ValueError(f"unknown policy view {which!r}; valid: {', '.join(VIEWS)}")
    return which


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    if hasattr(model, "trainable_parameters"):
        return list(model.trainable_parameters())
    return [p for p in model.parameters() if p.requires_grad]


def guided_velocity(model: Callable, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
    """The model's velocity, with classifier-free guidance when `cond` asks for it:
    v = v_u + s·(v_c − v_u), both halves in one batched forward of 2B rows."""
    if not cond.guided:
        return model(x, sigma, cond)
    both = Conditioning(prompts=[""] * len(cond) + list(cond.prompts),
                        inputs={k: torch.cat([cond.negative[k], v]) for k, v in cond.inputs.items()},
                        prompt_ids=torch.cat([cond.prompt_ids, cond.prompt_ids]),
                        group_ids=torch.cat([cond.group_ids, cond.group_ids]))
    sigma = sigma.expand(x.shape[0])
    v_uncond, v_cond = model(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
    return v_uncond + cond.guidance_scale * (v_cond - v_uncond)


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
    """target <- decay·target + (1 - decay)·source, over parameters and float buffers."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s.to(t.dtype), 1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        if t.dtype.is_floating_point:
            t.lerp_(s.to(t.dtype), 1.0 - decay)
        else:
            t.copy_(s)


# ----------------------------------------------------------------------------------- LoRA
# peft adapter names of the three trained views
ADAPTERS = {"current": "current", "old": "old", "ema": "ema"}
TRAINABLE_VIEWS = ("current", "critic")  # the views whose adapters take gradients
LORA_INITS = ("gaussian", "default")  # peft: gaussian A, or kaiming A; B = 0 in both


@dataclass
class LoraSettings:
    """`model.lora`: Paper A's r 32, α 64, gaussian init, on the joint attention's q/k/v/out and
    added projections. Targets match module names as suffixes, so `attn.to_q` adapts
    `transformer_blocks.N.attn.to_q` and not the dual-attention `attn2.to_q`."""

    rank: int = 32
    alpha: float = 64.0
    init: str = "gaussian"
    target_modules: list[str] = field(default_factory=lambda: [
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"])

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
        return LoraConfig(r=int(self.rank), lora_alpha=float(self.alpha), init_lora_weights=init,
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


def lora_module(model: nn.Module) -> nn.Module:
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
        self._tuner_layers = [m for m in target.modules() if _is_tuner_layer(m)]
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


def make_policy(model: nn.Module, model_cfg) -> Policy:
    """The policy a model config asks for: LoRA adapters (`model.lora`) or module copies, with
    `model.precision`, `model.gradient_checkpointing` and `model.compile`."""
    get = model_cfg.get if hasattr(model_cfg, "get") else (lambda k, d=None: d)
    if get("gradient_checkpointing", False):
        target = lora_module(model)
        if not hasattr(target, "enable_gradient_checkpointing"):
            raise ValueError(f"model.gradient_checkpointing: {type(target).__name__} does not support it")
        target.enable_gradient_checkpointing()
    lora = get("lora", None)
    precision = get("precision", "fp32") or "fp32"
    if lora is None:
        policy = Policy(model, precision=precision)
    else:
        from omegaconf import OmegaConf

        settings = OmegaConf.to_container(lora, resolve=True) if not isinstance(lora, dict) else dict(lora)
        policy = LoraPolicy(model, LoraSettings(**settings), precision=precision)
    policy.max_batch_size = get("max_batch_size", None)
    if get("compile", False):  # each distinct module once (under LoRA all views share one); the
        # critic, made later by add_critic(), is a copy of the compiled reference (or its adapter)
        views = (v for v in VIEWS if v != "critic")
        for target in {id(m): m for m in (lora_module(policy.module(v)) for v in views)}.values():
            target.compile()
    return policy
