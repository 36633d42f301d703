"""`rlzoo export`: a trained run's weights as safetensors, loadable without rlzoo's checkpoint.

A LoRA run (`model.lora`, e.g. task=t2i) exports its adapter as diffusers writes one
(<out>/pytorch_lora_weights.safetensors): `StableDiffusion3Pipeline.load_lora_weights(out)` loads it.
Training already leaves the evaluated weights' LoRA in <run_dir>/lora at every checkpoint.
Full fine-tuning runs (the toy tasks):

    rlzoo export run_dir=runs/shapes/paper_a/seed0 --out exported/ [weights=ema|current]

Writes <out>/model.safetensors (the velocity model's state dict: the EMA weights when the run
evaluated EMA weights, unless `weights=` says otherwise) and <out>/config.json (the model's config
with its `_target_`, the task and the run it came from), so

    model = hydra.utils.instantiate(config["model"]); model.load_state_dict(safetensors.torch.load_file(...))

rebuilds it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rlzoo.config import one_line_errors
from rlzoo.evaluate import WEIGHTS, eval_weights, open_run

TRAINED = ("ema", "current")  # the weights a run's checkpoint holds
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the name diffusers' LoRA loader looks for


def save_lora(lora_state: dict, settings, out: Path, metadata: dict | None = None) -> Path:
    """A LoRA as diffusers writes it: <out>/pytorch_lora_weights.safetensors, keys
    `transformer.<module>.lora_A/B.weight`, with the adapter's rank, alpha and targets as metadata,
    so `StableDiffusion3Pipeline.load_lora_weights(out)` restores the trained velocity exactly.
    Written to a temporary directory first, then swapped in: a crash never leaves half a LoRA."""
    import shutil

    from diffusers import StableDiffusion3Pipeline

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tensors = {k: v.detach().float().cpu().contiguous().clone() for k, v in lora_state.items()}
    StableDiffusion3Pipeline.save_lora_weights(
        tmp, transformer_lora_layers=tensors, weight_name=LORA_WEIGHTS,
        transformer_lora_adapter_metadata={"r": int(settings.rank), "lora_alpha": float(settings.alpha),
                                           "target_modules": list(settings.target_modules)})
    if metadata:
        (tmp / "rlzoo.json").write_text(json.dumps(metadata, indent=2))
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out / LORA_WEIGHTS


def export(run_dir: Path, out: Path, weights: str | None = None) -> Path:
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from rlzoo.config import ConfigError
    from rlzoo.runs import atomic_write_bytes, load_checkpoint

    run_dir = Path(run_dir)
    cfg, checkpoint = open_run(run_dir)
    weights = weights or eval_weights(cfg)
    if weights not in TRAINED:
        raise ConfigError(f"unknown weights={weights!r}; valid: {', '.join(TRAINED)}")
    state = load_checkpoint(checkpoint)["policy"][WEIGHTS[weights]]
    if cfg.model.get("lora") is not None:  # a LoRA run: the adapter, as diffusers loads it
        from rlzoo.policies import LoraSettings

        settings = LoraSettings(**OmegaConf.to_container(cfg.model.lora, resolve=True))
        return save_lora(state, settings, Path(out), {"weights": weights, "run_dir": str(run_dir),
                                                      "iterations": _iterations(run_dir)})
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}  # no shared storage
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"rlzoo_weights": weights, "run_dir": str(run_dir)})
    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "checkpoint"}
    atomic_write_bytes(out / "config.json", json.dumps(
        {"model": model, "task": cfg.task.name, "weights": weights, "run_dir": str(run_dir),
         "iterations": _iterations(run_dir)}, indent=2).encode())
    return out / "model.safetensors"


def _iterations(run_dir: Path) -> int | None:
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text()).get("iterations") if summary.exists() else None


@one_line_errors("rlzoo export")
def main(argv: list[str] | None = None) -> Path:
    from rlzoo.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    out = argv[argv.index("--out") + 1] if "--out" in argv and argv.index("--out") + 1 < len(argv) else None
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = sorted(set(options) - {"run_dir", "weights"})
    if "run_dir" not in options or out is None or unknown:
        raise ConfigError("usage: rlzoo export run_dir=DIR --out OUT_DIR [weights=ema|current]"
                          + (f" (unknown option {', '.join(unknown)})" if unknown else ""))
    path = export(Path(options["run_dir"]), Path(out), options.get("weights"))
    print(f"written: {', '.join(str(p) for p in sorted(path.parent.iterdir()))}")
    return path


if __name__ == "__main__":
    main()
