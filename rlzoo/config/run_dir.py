"""Where a run lives and whether a run directory can hold it: its name, the resume rules (README, Runs)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlzoo.config.build import plain
from rlzoo.config.untrusted import with_moved_targets
from rlzoo.errors import ConfigError


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """The run directory can hold this run (rlzoo.runs.directory: a folder that is empty or holds a
    run, with no links where rlzoo writes), and a run already there is this one: the same config
    (RESUMABLE_KEYS aside) in its config.yaml and in its checkpoint's record, a checkpoint that
    can be read, and no `init_from` it would ignore. A run is there once it has started (a
    checkpoint, or config.yaml beside a completed summary); a start that failed before its first
    checkpoint claims nothing, so the corrected command runs into the same directory. Nothing is
    written."""
    from rlzoo.runs.directory import check_run_dir_layout
    from rlzoo.runs.files import checkpoint_path, peek_checkpoint
    from rlzoo.runs.summary import read_summary

    run_dir = Path(run_dir)
    check_run_dir_layout(run_dir)
    saved, checkpoint = run_dir / "config.yaml", checkpoint_path(run_dir)
    summary = read_summary(run_dir) or {}
    completed = summary.get("status") == "completed"
    if not (checkpoint.exists() or (saved.exists() and completed)):
        return
    new = run_fingerprint(cfg)
    if saved.exists():  # (a resume writes a missing one back from the checkpoint's record)
        from rlzoo.runs.reading import UnreadableFile, load_config

        try:
            old = OmegaConf.to_container(load_config(saved), resolve=False)
        except UnreadableFile as exc:  # a damaged config.yaml: the directory still holds a run
            raise ConfigError(f"run directory {run_dir} holds a run whose config.yaml cannot be read ({exc}); "
                              f"choose another run_dir=...") from None
        diffs = config_differences(old if isinstance(old, dict) else {}, new)
        if diffs:
            raise ConfigError(
                f"run directory {run_dir} holds a run with a different config (differs in {', '.join(diffs[:5])}); "
                f"choose another run_dir=... or delete that directory")
    if checkpoint.exists():
        from rlzoo.errors import CheckpointError

        record = peek_checkpoint(checkpoint).get("run")
        diffs = config_differences(record, new)
        if diffs:
            raise CheckpointError(f"checkpoint {checkpoint} was written by a run with another config (differs in "
                                  f"{', '.join(diffs[:5])}); it was left in place: choose another run_dir=...")
        _check_init_from_resumes(cfg, run_dir, record)
    else:
        from rlzoo.runs.progress import is_finished

        if not is_finished(summary, cfg.train):
            raise ConfigError(f"run directory {run_dir} holds a completed run of {summary.get('iterations')} "
                              f"iterations whose checkpoint is gone, so it cannot be continued; choose another "
                              f"run_dir=...")


def _check_init_from_resumes(cfg: DictConfig, run_dir: Path, record: dict | None) -> None:
    """A run that resumes keeps the weights it started from: `init_from` may repeat what the run
    was started with (the same command resumes), but a different one would be ignored, so it is
    refused."""
    given = cfg.get("init_from")
    started = (record or {}).get("init_from") if isinstance(record, dict) else None
    if given is None or (started is not None and _same_path(given, started)):
        return
    raise ConfigError(f"init_from={str(given)!r} would be ignored: run directory {run_dir} already holds a run "
                      f"(started from {repr(str(started)) if started else 'the base model'}), which resumes from "
                      f"its checkpoint; choose another run_dir=... for the warm start, or drop init_from to resume")


def _same_path(a, b) -> bool:
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def run_fingerprint(cfg: DictConfig) -> dict:
    """The resolved config as plain values: what a checkpoint and config.yaml record of a run."""
    return plain(cfg)


def config_differences(old: dict | None, new: dict) -> list[str]:
    """Keys whose values differ between two runs' configs, except those a resumed run may change
    (RESUMABLE_KEYS); none when `old` is unknown (a checkpoint from before fingerprints)."""
    if not isinstance(old, dict):
        return []
    old = {k: _without_followed_seeds(v, old.get("seed")) if k in SEEDED_GROUPS else v
           for k, v in with_moved_targets(old).items()}
    # (on both sides: a component's own seed that equals the run's, a tiny reward's, is no difference either)
    new = {k: _without_followed_seeds(v, new.get("seed")) if k in SEEDED_GROUPS else v for k, v in new.items()}
    old = {**{k: v for k, v in ADDED_LATER.items() if not isinstance(v, dict)}, **old,
           **{k: {**{key: value for key, value in v.items() if key in (new.get(k) or {})}, **old.get(k, {})}
              for k, v in ADDED_LATER.items() if isinstance(v, dict)}}
    if (new.get("sampler") or {}).get("schedule") is not None:  # a family's own sigma rule: the static
        # shifts a run recorded beside it (3.0, and a student's 1.0) were never read; they are null now
        old = {**old, **{k: {**old[k], "shift": None} for k in ("sampler", "student") if isinstance(old.get(k), dict)
                         and "shift" in old[k]}}
    return [k for k in _diff(old, new) if not k.startswith(RESUMABLE_KEYS)]


# Keys added after runs were recorded, with the value those runs had without naming it.
# (A group's key counts only where the new config has it: model.attention_backend is t2i's alone.)
ADDED_LATER = {"train": {"rng": "stream"}, "init_from": None, "sampler": {"schedule": None},
               "model": {"compile": False, "attention_backend": None}}


# Groups whose components once seeded streams of their own (`seed: ${seed}`: the critic, R_dm,
# DMD); the run's randomness (rlzoo.rng.Randomness) now starts those streams from the run's seed.
# A run recorded with such a seed equal to its own resumes; one set apart drew otherwise.
SEEDED_GROUPS = ("reward", "critic", "objective")


def _without_followed_seeds(node, seed):
    """`node` without the `seed` keys (at any depth: a mix's parts) that equal the run's seed."""
    if isinstance(node, dict):
        return {k: _without_followed_seeds(v, seed) for k, v in node.items() if not (k == "seed" and v == seed)}
    return node


# Keys that may change when a run is resumed: they do not change what is trained (sweep_name only
# names where a sweep writes, so a run copied into another sweep with a larger budget resumes;
# run_dir only where the run lives, so a moved or copied run resumes in its new place;
# evaluations draw from their own fixed noise, so how often they happen changes no update;
# init_from only decides where a new run starts).
RESUMABLE_KEYS = ("train.iterations", "train.max_minutes", "train.max_nfe", "progress_bar", "logger", "threads",
                  "sweep_name", "run_dir", "eval.every", "eval.every_nfe", "eval.teacher_steps",
                  "task.embedding_cache", "dist", "checkpoint_every", "init_from", "variant")


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ------------------------------------------------------------------------- a run directory's name
def path_component(text: str) -> str:
    """`text` as one file name, so a value can never leave its folder: every character but letters,
    digits and `._,=+:@~-` percent-encoded ("/" is %2F, a space %20: the name needs no quotes in a
    shell), "." and ".." spelt out, and a name longer than file systems allow (255 bytes) cut to 180
    bytes plus a hash of the whole, so distinct texts stay distinct. ("" stays "".)"""
    from urllib.parse import quote

    name = quote(str(text), safe=",=+:@~")  # (quote keeps letters, digits and _.-~ as they are)
    if name in (".", ".."):
        name = name.replace(".", "%2E")
    if len(name.encode()) > 200:
        digest = hashlib.sha256(str(text).encode()).hexdigest()[:16]
        name = f"{name.encode()[:180].decode(errors='ignore')}~{digest}"
    return name


def check_sweep_name(name) -> None:
    """sweep_name names one folder under multirun/: a ConfigError for anything that would leave it."""
    text = str(name)
    if not text or text in (".", "..") or path_component(text) != text:
        raise ConfigError(f"sweep_name={text!r} must name one folder under multirun/: letters, digits and ._,=+:@~- "
                          f"(not '.' or '..'); set hydra.sweep.dir=... for a sweep elsewhere")


def _names_the_run(key: str) -> bool:
    """Whether an override goes into a run directory's name: not what the path already says (the
    task, the seed, the recipe's `name`; task.image_size=32 does change the task), not Hydra's or a
    sweep's settings, not what a resumed run may change (RESUMABLE_KEYS: where the run lives, its
    budgets, how it is watched)."""
    return not (key in ("task", "seed", "experiment", "debug", "name") or key.split(".")[0] in ("hydra", "sweep")
                or key.startswith(RESUMABLE_KEYS))


def run_variant(overrides: list[str]) -> str:
    """What a run's command line changes beyond its task and recipe, for its directory's name
    (`runs/<task>/<name><variant>/seed<seed>`): ",key=value,..." sorted by key, one entry per
    override whose value differs from what the config holds without those overrides (a component
    other than the recipe's, a number other than the task's); the objective, estimator and sampler
    only where `name` does not already say them. Escaped into one path component; "" for none."""
    from rlzoo.config.compose import GROUPS, compose_config, parse_overrides

    parsed = [o for o in parse_overrides(list(overrides)) if not o.is_sweep_override()]
    candidates = [o for o in parsed if _names_the_run(o.key_or_group)]
    if not candidates:
        return ""
    base = compose_config([o.input_line for o in parsed if not _names_the_run(o.key_or_group)],
                          return_hydra_config=True)
    chosen = compose_config([o.input_line for o in parsed])
    in_name = {"objective", "estimator", "sampler"} if chosen.name == (
        f"{chosen.objective.name}-{chosen.estimator.name}-{chosen.sampler.name}") else set()
    entries = {}
    for override in candidates:
        key = override.key_or_group
        if key in in_name:
            continue
        if override.is_delete():
            entries[key] = f"~{key}"
            continue
        value = override.value()
        if key in GROUPS:
            default = base.hydra.runtime.choices.get(key)
        else:
            default = OmegaConf.select(base, key, default=_MISSING, throw_on_resolution_failure=False)
        if value != default:
            entries[key] = override.input_line
    return path_component("".join(f",{entries[k]}" for k in sorted(entries)))


_MISSING = object()
