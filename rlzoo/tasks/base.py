"""What every task provides to the trainer."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from rlzoo.types import Conditioning

# Relative paths (rlzoo/tasks/base_models/...) resolve against the directory holding the rlzoo
# package: the source tree, or site-packages after a non-editable install.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


# Keys of a model config that configure the policy around the model, not the model's constructor
# (rlzoo.policies.make_policy).
POLICY_SETTINGS = ("checkpoint", "lora", "precision", "gradient_checkpointing", "compile", "attention_backend",
                   "max_batch_size", "teacher")  # teacher: false marks random weights, refused as a distillation teacher


class BaseCheckpointError(ValueError):
    pass


def resolve_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else PACKAGE_PARENT / path


def resolve_weights(path: str | None, key: str, how: str, kind: str = "local path") -> str:
    """Where pretrained weights are: a local path, or the cached snapshot of a hub id; never a
    download. ValueError (one line, naming the config key and `how` to get them) otherwise."""
    if not path:
        raise ValueError(f"{key} is not set; {how}")
    local = Path(str(path)).expanduser()
    if local.exists():
        return str(local)
    if str(path).startswith(("/", ".", "~")) or str(path).count("/") != 1:
        raise ValueError(f"{key}={path!r} does not exist; {how}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(path), local_files_only=True)
    except Exception:
        raise ValueError(f"{key}={path!r} is neither a {kind} nor a hub id in the local cache; {how}") from None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_base_checkpoint(path: str | Path, pretrain_command: str) -> dict:
    """Load a base checkpoint's state dict, or raise one clear error (before any model is built)."""
    resolved = resolve_path(path)
    if not resolved.exists():
        raise BaseCheckpointError(
            f"base checkpoint {str(path)!r} not found (looked at {resolved}); build it with `{pretrain_command}`")
    try:
        state = torch.load(resolved, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise BaseCheckpointError(
            f"base checkpoint {str(path)!r} is corrupt or not a torch checkpoint ({type(exc).__name__}); "
            f"rebuild it with `{pretrain_command}`") from None
    if not isinstance(state, dict) or "model" not in state:
        raise BaseCheckpointError(
            f"base checkpoint {str(path)!r} has no 'model' entry; rebuild it with `{pretrain_command}`")
    return state


def instantiate_model(model_cfg):
    """What the model config's `_target_` names, built from its keys (the policy settings aside)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    params = {k: v for k, v in cast(dict, OmegaConf.to_container(model_cfg, resolve=True)).items()
              if k not in POLICY_SETTINGS}
    return instantiate(params, _convert_="all")


def checked_eval_rewards(rewards: dict | None, own_scores: tuple[str, ...]) -> dict:
    """`task.eval_rewards` of a task with its own verifier: {name: reward}, reported on held-out
    samples under `name` beside the verifier's scores (whose names they may not take)."""
    rewards = dict(rewards or {})
    own = (*own_scores, *EVAL_RECORD_KEYS)
    taken = sorted(name for name in rewards if name in own or name.startswith(("teacher_", *(f"{k}/" for k in own))))
    if taken:
        raise ValueError(f"task.eval_rewards.{taken[0]}: the evaluation already reports a number of that name; "
                         f"choose another (taken: {', '.join(own)}, teacher_*)")
    return rewards


# what every eval.jsonl record holds beside the metrics (rlzoo.runs.progress.Progress.record_eval)
EVAL_RECORD_KEYS = ("iteration", "nfe_forward", "nfe_backward", "wall_s")


def check_lora_targets(lora_cfg, module_names: list[str]) -> None:

    from rlzoo.policies import LoraSettings

    LoraSettings.from_config(lora_cfg).check_targets(module_names)


class Task:
    name: str = "task"
    sample_shape: tuple[int, ...] = ()
    pretrain_command: str = "make pretrain"
    makes_images: bool = False  # True: `images(x0)` gives RGB images, so image rewards (PickScore, CLIP, ...) apply
    # rewards the held-out evaluation reports beside the task's own scores (`task.eval_rewards`: {name: reward})
    extra_eval_rewards: dict = {}
    # True: `score` is the task's own verifier (toy2d, shapes). A run that trains on another reward
    # reports that reward as its held-out `reward` and the verifier's as `verifier` (`headline_reward`)
    has_verifier: bool = False
    headline_reward = None  # set by rlzoo.config.build.use_headline

    def images(self, x0: Tensor) -> Tensor:
        """The samples as RGB images in [0, 1], (B, 3, H, W) (tasks that `makes_images`)."""
        raise NotImplementedError(f"task {self.name!r} makes no images")

    def train_prompts(self) -> list[str]:
        raise NotImplementedError

    def heldout_prompts(self) -> list[str]:
        raise NotImplementedError

    def sample_train_prompts(self, n: int, generator: torch.Generator) -> list[int]:
        """Indices into train_prompts() for one iteration's n prompt groups."""
        return torch.randint(len(self.train_prompts()), (n,), generator=generator).tolist()

    def eval_prompt_ids(self, num_samples: int) -> list[int]:
        """Indices into heldout_prompts() for one evaluation: round-robin over the prompts."""
        return [i % len(self.heldout_prompts()) for i in range(num_samples)]

    def conditioning(self, prompts: list[str], prompt_ids: Tensor, group_ids: Tensor) -> Conditioning:
        raise NotImplementedError

    def score(self, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        """Per-sample scores; `reward` is the primary one."""
        raise NotImplementedError

    def sample_metrics(self, x0: Tensor, prompt_ids: Tensor, teacher: Tensor | None = None) -> dict[str, float]:
        """Metrics of the whole evaluation sample set (distribution distances, also to the
        teacher's samples of the same noise when given), next to the means of the per-sample
        scores; none by default."""
        return {}

    def summarize(self, scores: dict[str, Tensor], prompt_ids: Tensor) -> dict[str, float]:
        return {k: float(v.float().mean()) for k, v in scores.items()}

    # classifier-free guidance needs an unconditional (empty-prompt) input the model was trained on
    supports_guidance: bool = False

    def negative_inputs(self, n: int) -> dict[str, Tensor]:
        """The empty prompt's conditioning inputs for n rows (tasks with `supports_guidance`)."""
        raise NotImplementedError(f"task {self.name!r} has no unconditional input")

    def guided(self, cond: Conditioning, scale: float) -> Conditioning:
        """`cond` with classifier-free guidance at `scale` (1 = unchanged)."""
        if float(scale) == 1.0:
            return cond
        return cond.with_guidance(scale, self.negative_inputs(len(cond)))

    def group_conditioning(self, prompt_ids: list[int], group_size: int) -> Conditioning:
        """Each chosen training prompt repeated `group_size` times; its group id is its position."""
        prompts = self.train_prompts()
        repeated = [prompts[i] for i in prompt_ids for _ in range(group_size)]
        ids = torch.tensor(prompt_ids).repeat_interleave(group_size)
        groups = torch.arange(len(prompt_ids)).repeat_interleave(group_size)
        return self.conditioning(repeated, prompt_ids=ids, group_ids=groups)

    def build_model(self, model_cfg) -> nn.Module:
        """The velocity model the model config's `_target_` names, with random weights."""
        return instantiate_model(model_cfg)

    @classmethod
    def check_model(cls, model_cfg, task_name: str) -> None:
        """Raise ValueError (one line) when the base weights are missing or `model.lora` targets a
        module the model does not have; builds the model on the meta device only (no weights)."""
        check_base_checkpoint(model_cfg.checkpoint, f"rlzoo-pretrain task={task_name}")
        if model_cfg.get("lora") is not None:
            from rlzoo.policies import lora_module

            with torch.device("meta"):
                model = instantiate_model(model_cfg)
            check_lora_targets(model_cfg.lora, [n for n, _ in lora_module(model).named_modules()])

    def load_base_model(self, model_cfg) -> nn.Module:
        state = check_base_checkpoint(model_cfg.checkpoint, self.pretrain_command)
        model = self.build_model(model_cfg)
        model.load_state_dict(state["model"])
        return model

    def save_grid(self, x0: Tensor, cond: Conditioning, path: Path) -> None:
        raise NotImplementedError
