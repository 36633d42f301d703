"""`init_from=` checked before any model (rlzoo/warm_start.py loads it): which kind of directory it
is — a run, a LoRA, an `rlzoo export` — and whether it fits this run."""
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
        if not (path / "checkpoints" / "last.pt").is_file():
            raise ConfigError(f"init_from={str(path)!r} is a run directory without a checkpoint "
                              f"(checkpoints/last.pt): it never got past its first evaluation")
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
    if raw is None or (Path(str(cfg.get("run_dir", ""))) / "checkpoints" / "last.pt").is_file():
        return  # (a run that has a checkpoint resumes from it: where it started no longer matters)
    path = Path(str(raw)).expanduser()
    if not path.is_dir():
        raise ConfigError(f"init_from={str(raw)!r} is not a directory")
    kind, lora = kind_of(path), cfg.model.get("lora")
    if kind == "run":
        parent = parent_config(path)
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
        task = _json(path / "config.json", "rlzoo export's config.json").get("task")
        if task != cfg.task.name:
            raise ConfigError(f"init_from={str(raw)!r} was exported from task={task}, this run is task={cfg.task.name}")


def parent_config(path: Path):
    """A parent run's config.yaml, as plain data: a warm start reads its task name, LoRA settings
    and evaluation weights and builds nothing from it, so a user's own components in it are fine."""
    from omegaconf import OmegaConf

    from rlzoo.runs.reading import UnreadableFile, load_yaml

    try:
        data = load_yaml(path / "config.yaml", "the parent run's config")
    except UnreadableFile as exc:
        raise ConfigError(f"init_from={str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("task"), dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"init_from={str(path)!r}: its config.yaml is not a run's config")
    return OmegaConf.create(data)


def _json(path: Path, what: str) -> dict:
    """A JSON object file of a warm start's directory, or a one-line ConfigError naming it."""
    from rlzoo.runs.reading import UnreadableFile, load_json

    try:
        data = load_json(path, what)
    except UnreadableFile as exc:
        raise ConfigError(f"init_from={str(path.parent)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"init_from={str(path.parent)!r}: {path.name} is not a JSON object")
    return data


def _check_lora_shape(raw, rank: int, alpha: float, lora) -> None:
    if (rank, alpha) != (int(lora.rank), float(lora.alpha)):
        raise ConfigError(f"init_from={str(raw)!r} is a LoRA of rank {rank}, alpha {alpha:g}, and this run's "
                          f"model.lora has rank {lora.rank}, alpha {float(lora.alpha):g}: set "
                          f"model.lora.rank={rank} model.lora.alpha={alpha:g}")


def lora_rank_alpha(path: Path) -> tuple[int, float]:
    """A LoRA directory's rank and alpha, from its metadata (no tensor read)."""
    if (path / PEFT_LORA).is_file():
        config = _json(path / "adapter_config.json", "peft's adapter config, beside adapter_model.safetensors")
        try:
            return int(config["r"]), float(config["lora_alpha"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"init_from={str(path)!r}: adapter_config.json has no r and lora_alpha") from None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path / DIFFUSERS_LORA), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        return int(meta["transformer.r"]), float(meta["transformer.lora_alpha"])
    except (OSError, SafetensorError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"init_from={str(path)!r}: {DIFFUSERS_LORA} says nothing readable of its rank and alpha "
                          f"(its lora_adapter_metadata: {type(exc).__name__})") from None
