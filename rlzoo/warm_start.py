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

import json
from pathlib import Path

from rlzoo.errors import ConfigError

DIFFUSERS_LORA, PEFT_LORA, EXPORTED = "pytorch_lora_weights.safetensors", "adapter_model.safetensors", "model.safetensors"
# the prefix each LoRA format puts before the adapted module's name
LORA_PREFIXES = {DIFFUSERS_LORA: "transformer.", PEFT_LORA: "base_model.model."}


def kind_of(path: Path) -> str:
    """"run", "lora" or "exported"; a ConfigError (one line) for anything else."""
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        return "run"
    if (path / DIFFUSERS_LORA).is_file() or (path / PEFT_LORA).is_file():
        return "lora"
    if (path / EXPORTED).is_file() and (path / "config.json").is_file():
        return "exported"
    raise ConfigError(f"init_from={str(path)!r} is not a run directory (config.yaml, checkpoints/), a LoRA directory "
                      f"({DIFFUSERS_LORA} or {PEFT_LORA}) nor an exported one ({EXPORTED} + config.json)")


def check_init_from(cfg) -> None:
    """Before any model: the path is one of the three kinds, and fits this run (LoRA to a LoRA
    run of the same rank and alpha, full weights to a full fine-tuning run of the same task)."""
    raw = cfg.get("init_from")
    if raw is None:
        return
    path = Path(str(raw)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"init_from={str(raw)!r} is not a directory")
    kind, lora = kind_of(path), cfg.model.get("lora")
    if kind == "run":
        from rlzoo.evaluate import open_run

        parent, _ = open_run(path)
        if parent.task.name != cfg.task.name:
            raise ConfigError(f"init_from={str(raw)!r} is a run of task={parent.task.name}, this run is task={cfg.task.name}")
        if (parent.model.get("lora") is None) != (lora is None):
            raise ConfigError(f"init_from={str(raw)!r} holds {'full' if parent.model.get('lora') is None else 'LoRA'} "
                              f"weights and this run trains {'full weights' if lora is None else 'a LoRA'}")
        if lora is not None:
            _check_lora_shape(raw, int(parent.model.lora.rank), float(parent.model.lora.alpha), lora)
    elif kind == "lora":
        if lora is None:
            raise ConfigError(f"init_from={str(raw)!r} is a LoRA and this run trains full weights (model.lora is not set)")
        _check_lora_shape(raw, *lora_rank_alpha(path), lora)
    elif lora is not None:
        raise ConfigError(f"init_from={str(raw)!r} holds full weights and this run trains a LoRA")
    else:
        task = json.loads((path / "config.json").read_text()).get("task")
        if task != cfg.task.name:
            raise ConfigError(f"init_from={str(raw)!r} was exported from task={task}, this run is task={cfg.task.name}")


def _check_lora_shape(raw, rank: int, alpha: float, lora) -> None:
    if (rank, alpha) != (int(lora.rank), float(lora.alpha)):
        raise ConfigError(f"init_from={str(raw)!r} is a LoRA of rank {rank}, alpha {alpha:g}, and this run's "
                          f"model.lora has rank {lora.rank}, alpha {float(lora.alpha):g}: set "
                          f"model.lora.rank={rank} model.lora.alpha={alpha:g}")


def lora_rank_alpha(path: Path) -> tuple[int, float]:
    """A LoRA directory's rank and alpha, from its metadata (no tensor read)."""
    if (path / PEFT_LORA).is_file():
        config = json.loads((path / "adapter_config.json").read_text())
        return int(config["r"]), float(config["lora_alpha"])
    from safetensors import safe_open

    with safe_open(str(path / DIFFUSERS_LORA), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    if "transformer.r" not in meta:
        raise ConfigError(f"init_from={str(path)!r}: {DIFFUSERS_LORA} says nothing of its rank and alpha "
                          f"(no lora_adapter_metadata)")
    return int(meta["transformer.r"]), float(meta["transformer.lora_alpha"])


def load_weights(path: Path, cfg) -> tuple[dict, dict]:
    """(the weights of the policy's trained view, the record summary.json keeps) of `init_from`."""
    from safetensors.torch import load_file

    kind = kind_of(path)
    record = {"path": str(path), "kind": kind}
    if kind == "run":
        from rlzoo.evaluate import WEIGHTS, eval_weights, open_run
        from rlzoo.runs import load_checkpoint

        parent, checkpoint = open_run(path)
        state = load_checkpoint(checkpoint)
        weights = eval_weights(parent)
        record.update(weights=weights, iterations=int(state["progress"]["iteration"]))
        return state["policy"][WEIGHTS[weights]], record
    if kind == "lora":
        name = DIFFUSERS_LORA if (path / DIFFUSERS_LORA).is_file() else PEFT_LORA
        prefix = LORA_PREFIXES[name]
        tensors = load_file(str(path / name))
        info = path / "rlzoo.json"
        if info.is_file():
            written = json.loads(info.read_text())  # (rlzoo's: which weights, after how many iterations)
            record.update(weights=written.get("weights"), iterations=written.get("iteration", written.get("iterations")))
        return {k.removeprefix(prefix): v for k, v in tensors.items()}, record
    info = json.loads((path / "config.json").read_text())
    record.update(weights=info.get("weights"), iterations=info.get("iterations"))
    return load_file(str(path / EXPORTED)), record


def warm_start(policy, path: Path, cfg) -> dict:
    """Load `init_from` into the policy's current, old and EMA weights; returns the record. Weights
    that do not fit the model are a CheckpointError naming the directory."""
    from rlzoo.errors import CheckpointError

    weights, record = load_weights(Path(path), cfg)
    try:
        policy.load_state_dict({view: weights for view in ("current", "old", "ema")})
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"init_from={str(path)!r} does not fit this run's model ({type(exc).__name__}: "
                              f"{reason})") from None
    return record
