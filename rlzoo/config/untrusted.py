"""A run directory's config.yaml is data, not code (README, Reliability): every `_target_` in it
must be a shipped component (or one the user names), and it is validated like a composed config."""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from rlzoo.config.compose import CONF_DIR
from rlzoo.errors import ConfigError


# ------------------------------------------------------------------ a run's files are data, not code
@functools.lru_cache(maxsize=1)
def shipped_targets() -> frozenset[str]:
    """Every `_target_` named in the shipped config tree: the components rlzoo will build from a
    config it did not compose itself (a run directory's config.yaml, an export's config.json)."""
    targets: set[str] = set()
    for path in CONF_DIR.rglob("*.yaml"):
        _collect_targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False), targets)
    return frozenset(targets)


# Components that moved since runs were recorded, by their recorded path: an older run's config
# reads as naming them where they are now, so it still resumes, evaluates and reports.
MOVED_TARGETS = {
    "rlzoo.critic.Critic": "rlzoo.distribution_matching.critic.Critic",
    "rlzoo.objectives.distribution_matching.DMD": "rlzoo.distribution_matching.objectives.DMD",
    "rlzoo.objectives.distribution_matching.DMDR": "rlzoo.distribution_matching.objectives.DMDR",
    "rlzoo.rewards.distribution.DistributionMatchingReward": "rlzoo.distribution_matching.reward.DistributionMatchingReward",
}


def with_moved_targets(node: Any) -> Any:
    """A plain config with every `_target_` of MOVED_TARGETS replaced by the component's path now."""
    if isinstance(node, dict):
        return {k: MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else with_moved_targets(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [with_moved_targets(v) for v in node]
    return node


def _collect_targets(node, out: set) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                out.add(value)
            _collect_targets(value, out)
    elif isinstance(node, list):
        for value in node:
            _collect_targets(value, out)


def _untrusted_entries(node, prefix: str = ""):
    """(key path, value) of every `_target_`, and of every string holding an interpolation, in a
    plain container."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "_target_":
                yield path, value
            yield from _untrusted_entries(value, path + ".")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _untrusted_entries(value, f"{prefix}{i}.")
    elif isinstance(node, str) and "${" in node:
        yield prefix.rstrip("."), node


def check_untrusted(container: dict, source: str, trusted: frozenset[str] = frozenset()) -> None:
    """Refuse a config read from a file rlzoo did not compose (a run directory's config.yaml)
    unless every `_target_` in it is a shipped component or one in `trusted` (named by the
    user on the command line), and it holds no interpolation (rlzoo saves configs resolved, so
    one is a sign of a crafted file; resolvers would run)."""
    allowed = shipped_targets() | trusted
    for path, value in _untrusted_entries(container):
        if path.rpartition(".")[2] == "_target_":
            if not isinstance(value, str) or value not in allowed:
                raise ConfigError(
                    f"{source} names {path}={str(value)[:80]!r}, which is not one of rlzoo's components; rlzoo never "
                    f"runs code named by a file it reads (a component you wrote yourself runs when you name its "
                    f"_target_ on the command line)")
        else:
            raise ConfigError(f"{source} holds an interpolation at {path} ({str(value)[:60]!r}); rlzoo saves a run's "
                              f"config resolved, so this file was not written by rlzoo-train")


def load_untrusted_config(path: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """A run directory's config.yaml as data: read with a safe YAML loader, every `_target_`
    checked (`check_untrusted`), then `key=value` overrides applied to keys it already has (an
    unknown key is refused as rlzoo-train refuses one). Targets named in `overrides` are the
    user's own and trusted. Validated like a config rlzoo-train composes."""
    from rlzoo.runs.reading import load_config

    path = Path(path)
    container = OmegaConf.to_container(load_config(path), resolve=False)  # bounded: no hang, no bomb
    container = with_moved_targets(container)
    pairs = [str(o).split("=", 1) for o in overrides]
    for pair in pairs:
        if len(pair) != 2 or pair[0].startswith(("+", "~")) or not pair[0]:
            raise ConfigError(f"override {'='.join(pair)!r} must be key=value for a key the run's config has")
    trusted = frozenset(v for k, v in pairs if k == "_target_" or k.endswith("._target_"))  # the user's own
    check_untrusted(container, str(path), trusted)
    cfg = OmegaConf.create(container)
    for key, value in pairs:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            valid = ", ".join(sorted(str(k) for k in node)) if isinstance(node, DictConfig) else "none"
            raise ConfigError(f"unknown key {key!r} ({leaf!r} is not a key of {parent or 'the config'} in {path}; "
                              f"valid: {valid})")
        try:
            OmegaConf.update(cfg, key, _parse_value(value), merge=False)
        except Exception as exc:
            raise ConfigError(f"{key}={value!r}: {' '.join(str(exc).split())[:160]}") from None
    return cast(DictConfig, cfg)


def _parse_value(text: str):
    """A command-line value as Hydra types it (1 -> int, 1e-4 -> float, true -> bool, null)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"key={text}").value()
    except Exception:
        return text
