"""`rlzoo export`: a trained run's weights as safetensors, loadable without rlzoo's checkpoint.

A LoRA run (`model.lora`, e.g. task=t2i) exports its adapter as diffusers writes one
(<out>/pytorch_lora_weights.safetensors): `StableDiffusion3Pipeline.load_lora_weights(out)` loads it.
Training already leaves the evaluated weights' LoRA in <run_dir>/lora at every checkpoint.
Full fine-tuning runs (the toy tasks):

    rlzoo export run_dir=runs/shapes/paper_a/seed0 --out exported/ [weights=ema|current] [--overwrite]

Writes <out>/model.safetensors (the velocity model's state dict: the EMA weights when the run
evaluated EMA weights, unless `weights=` says otherwise) and <out>/config.json (the model's config
with its `_target_`, the task and the run it came from), so

    from rlzoo.commands.export import load_model
    model = load_model("exported/")      # checks config.json's _target_ is one of rlzoo's models

rebuilds it. `--out` must be new, empty, or a directory an earlier export wrote (its manifest,
.rlzoo-files.json, says which files; one edited since counts as the user's); `--overwrite`
replaces the files an export writes in any other directory and nothing else. A run directory,
or a folder inside one, is never an output.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rlzoo.errors import OutputRefused, one_line_errors
from rlzoo.evaluate import WEIGHTS, eval_weights, open_run
from rlzoo.policies import LORA_WEIGHTS, lora_files
from rlzoo.tasks.base import POLICY_SETTINGS

TRAINED = ("ema", "current")  # the weights a run's checkpoint holds
USAGE = "usage: rlzoo export run_dir=DIR --out OUT_DIR [weights=ema|current] [key=value ...] [--overwrite]"


def export(run_dir: Path, out: Path, weights: str | None = None, overwrite: bool = False,
           overrides: Sequence[str] = ()) -> Path:
    """Write a run's weights into `out` (README, Runs). `out` may be new, empty, or a directory an
    earlier export wrote; any other non-empty directory needs `overwrite`, and even then only the
    files written here are replaced. A run directory is never an output."""
    from safetensors.torch import save

    from rlzoo.config import ConfigError, plain
    from rlzoo.runs import load_checkpoint
    from rlzoo.runs.outputs import OutputDir

    run_dir = Path(run_dir)
    if weights is not None and weights not in TRAINED:
        raise ConfigError(f"unknown weights={weights!r}; valid: {', '.join(TRAINED)}")
    cfg, checkpoint = open_run(run_dir, list(overrides))  # (overrides: a user's own `_target_`s, trusted)
    weights = weights or eval_weights(cfg)
    target = OutputDir(out, overwrite)
    names = [LORA_WEIGHTS, "rlzoo.json"] if cfg.model.get("lora") is not None else ["model.safetensors", "config.json"]
    target.claim(names)  # refused before the checkpoint is even read
    earlier = _exported_from(target.path)
    if earlier is not None and not _same_run(earlier, run_dir) and not overwrite:
        raise OutputRefused(f"{target.path} holds the export of another run ({earlier}); choose another --out, or "
                            f"pass --overwrite to replace it with this run's")
    state = load_checkpoint(checkpoint)
    state = state.get("policy", {}).get(WEIGHTS[weights]) if isinstance(state.get("policy"), dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"checkpoint {checkpoint} holds no {weights!r} weights; it was left in place")
    if cfg.model.get("lora") is not None:  # a LoRA run: the adapter, as diffusers loads it
        from rlzoo.policies import LoraSettings

        settings = LoraSettings.from_config(cfg.model.lora)
        files = lora_files(state, settings, {"weights": weights, "run_dir": str(run_dir),
                                             "iterations": _iterations(run_dir)})
    else:
        model = {k: v for k, v in plain(cfg.model).items() if k not in POLICY_SETTINGS}  # (the class's own keys)
        _check_fits(cfg, state, checkpoint)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}  # no shared storage
        files = {"model.safetensors": save(tensors, metadata={"rlzoo_weights": weights, "run_dir": str(run_dir)}),
                 "config.json": json.dumps({"model": model, "task": cfg.task.name, "weights": weights,
                                            "run_dir": str(run_dir), "iterations": _iterations(run_dir)},
                                           indent=2).encode()}
    for name, data in files.items():
        target.write(name, data)
    target.close()
    return target.path / names[0]


def _exported_from(folder: Path) -> str | None:
    """The run an earlier export in `folder` came from (its config.json's or rlzoo.json's run_dir)."""
    from rlzoo.runs.reading import UnreadableFile, load_json

    for name in ("config.json", "rlzoo.json"):
        if (folder / name).is_file():
            try:
                record = load_json(folder / name, "an earlier export's record")
            except UnreadableFile:
                return None
            return str(record.get("run_dir")) if isinstance(record, dict) and record.get("run_dir") else None
    return None


def _same_run(a: str, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _check_fits(cfg, state: dict, checkpoint: Path) -> None:
    """The weights fit the run's model (a foreign checkpoint is refused, not exported)."""
    from rlzoo.config import build

    model = build(cfg.task).load_base_model(cfg.model)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        from rlzoo.errors import CheckpointError

        raise CheckpointError(f"checkpoint {checkpoint} does not fit this run's model ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:160]}); it was left in place") from None


def load_model(directory: Path):
    """The velocity model a full fine-tuning export wrote (<dir>/config.json + model.safetensors),
    without rlzoo's checkpoint format, in eval mode: `model(x, sigma, cond)` is the velocity a
    sampler takes (README: sampling from an export). config.json is untrusted input: its `_target_` must be one of
    rlzoo's shipped models, so loading a downloaded export runs no code it names."""
    from safetensors.torch import load_file

    from rlzoo.config import ConfigError, build, check_untrusted
    from rlzoo.runs.reading import load_json

    directory = Path(directory)
    config = load_json(directory / "config.json", "an rlzoo export's config")
    model_cfg = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"{directory / 'config.json'} is not an rlzoo export's config (no model)")
    check_untrusted({"model": model_cfg}, str(directory / "config.json"))
    model = build({k: v for k, v in model_cfg.items() if k not in POLICY_SETTINGS})
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()  # (for sampling: a model comes back in inference mode)


def _iterations(run_dir: Path) -> int | None:
    from rlzoo.runs import read_summary

    return (read_summary(run_dir) or {}).get("iterations")


@one_line_errors("rlzoo export")
def main(argv: list[str] | None = None) -> Path:
    from rlzoo.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    out = argv[argv.index("--out") + 1] if "--out" in argv and argv.index("--out") + 1 < len(argv) else None
    rest = [a for i, a in enumerate(argv) if a != "--out" and not (i and argv[i - 1] == "--out")]
    flags = [a for a in rest if a.startswith("-")]
    options = dict(a.split("=", 1) for a in rest if "=" in a and not a.startswith("-"))
    unknown = sorted(set(flags) - {"--overwrite"}) + [a for a in rest if "=" not in a and not a.startswith("-")]
    if "run_dir" not in options or out is None or unknown:
        raise ConfigError(USAGE + (f" (unknown option {', '.join(unknown)})" if unknown else ""))
    overrides = [f"{k}={v}" for k, v in options.items() if k not in ("run_dir", "weights")]  # e.g. your reward's _target_
    path = export(Path(options["run_dir"]), Path(out).expanduser(), options.get("weights"), "--overwrite" in flags,
                  overrides)
    print(f"written: {', '.join(str(p) for p in sorted(path.parent.iterdir()) if p.name != '.rlzoo-files.json')}")
    return path


if __name__ == "__main__":
    main()
