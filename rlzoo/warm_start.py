"""`init_from=`: start a new run from weights trained elsewhere (a warm start).

    rlzoo-train task=shapes init_from=runs/shapes/epg-elbo-dpm2/seed0          # another run
    rlzoo-train task=t2i init_from=runs/t2i/.../lora                           # a LoRA directory
    rlzoo-train task=shapes init_from=exported/                                # `rlzoo export` output

What each kind gives:
- a run directory (config.yaml + checkpoints/last.pt): the weights its evaluations measured (EMA
  or current, as `rlzoo export` takes them), LoRA or full;
- a LoRA directory: diffusers' `pytorch_lora_weights.safetensors` (what rlzoo writes into a run's
  `lora/` and `rlzoo export` writes) or peft's `adapter_model.safetensors` + `adapter_config.json`
  (what `PeftModel.save_pretrained` writes); its rank and alpha must be this run's `model.lora`;
- an exported directory (`model.safetensors` + `config.json`, `rlzoo export` of a full fine-tuning
  run).

The policy's current, old and EMA weights all start from them; the reference (the KL's anchor, and
the teacher of Paper B's critic) stays the base model of `model`. The run's first evaluation
(`before`) then measures the warm-started weights. A run with a checkpoint resumes from it, as
always: `init_from` only decides where a new run starts. summary.json records the parent
(`init_from`: path, kind, weights, its iterations).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rlzoo.config.init_from import DIFFUSERS_LORA, EXPORTED, LORA_PREFIXES, PEFT_LORA, kind_of


def load_weights(path: Path) -> tuple[dict, dict]:
    """(the weights of the policy's trained view, the record summary.json keeps) of `init_from`."""
    from safetensors.torch import load_file

    kind = kind_of(path)
    record: dict[str, Any] = {"path": str(Path(path).resolve()), "kind": kind}
    if kind == "run":
        from rlzoo.config.init_from import parent_config
        from rlzoo.errors import CheckpointError
        from rlzoo.evaluate import WEIGHTS, eval_weights
        from rlzoo.runs import checkpoint_path, load_checkpoint

        parent = parent_config(path)
        try:
            state = load_checkpoint(checkpoint_path(path))
        except CheckpointError as exc:
            raise CheckpointError(f"init_from={str(path)!r}: {str(exc).split('; it was left in place')[0]}; "
                                  f"warm-start from another run") from None
        weights = eval_weights(parent)
        record.update(weights=weights, iterations=int(state["progress"]["iteration"]))
        return state["policy"][WEIGHTS[weights]], record
    if kind == "lora":
        name = DIFFUSERS_LORA if (path / DIFFUSERS_LORA).is_file() else PEFT_LORA
        prefix = LORA_PREFIXES[name]
        tensors = load_file(str(path / name))
        info = path / "rlzoo.json"
        if info.is_file():
            written = _info(info, "the LoRA's rlzoo.json")  # (rlzoo's: which weights, after how many iterations)
            record.update(weights=written.get("weights"), iterations=written.get("iteration", written.get("iterations")))
        return {k.removeprefix(prefix): v for k, v in tensors.items()}, record
    info = _info(path / "config.json", "an rlzoo export's config")
    record.update(weights=info.get("weights"), iterations=info.get("iterations"))
    return load_file(str(path / EXPORTED)), record


def _info(path: Path, what: str) -> dict:
    """A JSON object of the directory's own record (rlzoo's), or {} where it holds none."""
    from rlzoo.runs.reading import load_json

    info = load_json(path, what)
    return info if isinstance(info, dict) else {}


def warm_start(policy, path: Path) -> dict:
    """Load `init_from` into the policy's current, old and EMA weights; returns the record. Weights
    that do not fit the model are a CheckpointError naming the directory."""
    from rlzoo.errors import CheckpointError

    weights, record = load_weights(Path(path))
    try:
        policy.load_state_dict({view: weights for view in ("current", "old", "ema")})
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"init_from={str(path)!r} does not fit this run's model ({type(exc).__name__}: "
                              f"{reason})") from None
    return record
