"""Composing a run's config from the shipped tree (conf/) and the command line's overrides."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlzoo.errors import ConfigError


def _conf_dir() -> Path:
    """The config tree: rlzoo/conf inside an installed package (`pip install .` ships conf/ there),
    else conf/ beside the package in the source tree (an editable install, a checkout)."""
    package = Path(__file__).resolve().parents[1]  # rlzoo/
    shipped = package / "conf"
    return shipped if (shipped / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = _conf_dir()


GROUPS = ("task", "model", "sampler", "estimator", "objective", "advantage", "kl", "reward",
          "optimizer", "lr_schedule", "logger", "experiment", "debug", "prompts", "row", "sweep")


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _load(group: str, name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / group / f"{name}.yaml")


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of command-line overrides, with the config groups known, so that sweep
    functions (`choice`, `range`, `glob`) expand as the sweeper will expand them."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF_DIR)))
    try:
        return OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(" ".join(str(exc).split())) from None


def override_values(override) -> list[str]:
    """Every value a parsed override takes: one, or each value of a sweep."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def check_overrides(overrides: list[str]) -> None:
    """Reject `group=name` overrides that name no YAML file, listing the valid choices (each
    value of a sweep too: `a,b`, `choice(a,b)`, `glob(...)`)."""
    items = [o for o in overrides if "=" in o and not o.startswith("-")]
    for override in parse_overrides(items):
        key = override.key_or_group
        if key.startswith("hydra") or "/" in key or key not in GROUPS or override.is_delete():
            continue
        choices = available(key)
        for name in override_values(override):
            if name and name != "null" and name not in choices:
                raise ConfigError(f"unknown {key} {name!r}; valid choices: {', '.join(choices)}")


def _unknown_key_error(message: str, overrides: list[str]) -> str:
    """One line for Hydra's "Could not override 'a.b'" (a key the config does not have)."""
    import re

    match = re.search(r"Could not override '([^']+)'", message)
    if not match:
        return " ".join(message.split())
    key = match.group(1)
    parent, _, leaf = key.rpartition(".")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose(config_name="config", overrides=[o for o in overrides if not o.split("=")[0].lstrip("+~") == key])
    node = OmegaConf.select(base, parent) if parent else base
    valid = ", ".join(sorted(str(k) for k in node)) if isinstance(node, DictConfig) else "none"
    return (f"unknown key {key!r} ({leaf!r} is not a key of {parent or 'the config'}; valid: {valid}); "
            f"to add a new key write +{key}=...")


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config `rlzoo-train` would run, composed without starting a Hydra job."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides),
                           return_hydra_config=return_hydra_config)
    except HydraException as exc:  # a misspelt key, a bad value type: one line, not a traceback
        raise ConfigError(_unknown_key_error(str(exc), list(overrides))) from None


def override_dict(overrides) -> dict[str, str]:
    """`key=value` command-line overrides as {key: value}; `+`/`~` prefixes dropped."""
    pairs = [str(o).split("=", 1) for o in overrides if "=" in str(o)]
    return {k.lstrip("+~"): v for k, v in pairs}
