"""Composing a run's config from the shipped tree (conf/) and the command line's overrides."""
from __future__ import annotations

from pathlib import Path
from typing import cast

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


# The config directories a composition searches: the shipped tree, then a user's own ones, named on
# the command line as Hydra names them (`hydra.searchpath=[DIR, ...]`); set by `use_search_path`.
_search_dirs: list[Path] = [CONF_DIR]


def search_path(overrides: list[str]) -> list[Path]:
    """The shipped config tree, then every directory of a `hydra.searchpath=[...]` override (a
    plain path or file://...; relative to the current directory). A directory that is not there
    is a ConfigError."""
    dirs = [CONF_DIR]
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.lstrip("+") != "hydra.searchpath":
            continue
        from hydra.core.override_parser.overrides_parser import OverridesParser

        entries = OverridesParser.create().parse_override(f"{key}={value}").value()
        for entry in entries if isinstance(entries, list) else [entries]:
            entry = str(entry)
            if entry.startswith("pkg://"):
                raise ConfigError(f"hydra.searchpath entry {entry!r}: rlzoo takes directories (DIR or file://DIR)")
            path = Path(entry.removeprefix("file://")).expanduser().resolve()
            if not path.is_dir():
                raise ConfigError(f"hydra.searchpath entry {entry!r} is not a directory")
            dirs.append(path)
    return dirs


def use_search_path(overrides: list[str]) -> None:
    """Make `available` and `_load` see the user's config directories of these overrides."""
    _search_dirs[:] = search_path(overrides)


def available(group: str) -> list[str]:
    """The names of a config group's options, shipped and the user's own."""
    return sorted({p.stem for d in _search_dirs for p in (d / group).glob("*.yaml")})


def _load(group: str, name: str) -> DictConfig:
    """An option's YAML: the shipped one, else the first user directory's (Hydra's order)."""
    path = next((d / group / f"{name}.yaml" for d in _search_dirs if (d / group / f"{name}.yaml").is_file()),
                CONF_DIR / group / f"{name}.yaml")
    return cast(DictConfig, OmegaConf.load(path))  # (a group's option is a mapping)


def plain_sweep(overrides: list[str]) -> list[str]:
    """`+sweep=name` (the documented spelling, from when no default named a sweep) as `sweep=name`:
    the defaults list now holds `sweep: null` before `debug`, so that debug=tiny shrinks a sweep too."""
    return [f"sweep={o.split('=', 1)[1]}" if str(o).lstrip("+").startswith("sweep=") else o for o in overrides]


# Keys whose values are paths: in a single run a value is taken as written (run directories are
# named `...,reward=pickscore/...`, and Hydra's grammar reads ',' and '=' in a value otherwise)
PATH_KEYS = ("run_dir", "init_from")


def literal_paths(overrides: list[str]) -> list[str]:
    """`run_dir=<path>` and `init_from=<path>` with the path quoted for Hydra when it holds a
    character its grammar would read (`=`, `,`, brackets, quotes, spaces). For a single run only:
    in a sweep, a comma in a value means several values."""
    import re

    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if sep and key in PATH_KEYS and value[:1] not in ("'", '"') and re.search(r"[=,\[\]{}()'\"\s\\]", value):
            item = f"{key}='{value.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"
        out.append(item)
    return out


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of command-line overrides, with the config groups known, so that sweep
    functions (`choice`, `range`, `glob`) expand as the sweeper will expand them."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    search = create_config_search_path(str(CONF_DIR))
    for directory in _search_dirs[1:]:  # a user's own config directories (hydra.searchpath): glob() sees them
        search.append("rlzoo-user", f"file://{directory}")
    loader = ConfigLoaderImpl(config_search_path=search)
    try:
        return OverridesParser.create(config_loader=loader).parse_overrides(plain_sweep(list(overrides)))
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
    use_search_path(overrides)
    items = [o for o in overrides if "=" in o and not o.startswith("-")]
    for override in parse_overrides(items):
        key = override.key_or_group
        if key.startswith("hydra") or "/" in key or key not in GROUPS or override.is_delete():
            continue
        choices = available(key)
        for name in override_values(override):
            if name and name != "null" and name not in choices:
                raise ConfigError(f"unknown {key} {name!r}; valid choices: {', '.join(choices)}")


# Keys no shipped config sets but rlzoo reads when they are there: `+key=value` adds them. (A key
# inside a component's node is an argument of its class, which validation checks.)
OPTIONAL_KEYS = {"eval.shift": "the evaluation sampler's schedule shift (default: the rollout sampler's)"}


def config_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every leaf key of a config, dotted (Hydra's own node left out)."""
    keys = []
    for k in cfg.keys():
        path = f"{prefix}{k}"
        if path == "hydra":
            continue
        node = cfg._get_node(k)
        keys += config_keys(node, f"{path}.") if isinstance(node, DictConfig) and not node._is_none() else [path]
    return keys


def nearest_keys(key: str, cfg: DictConfig) -> list[str]:
    """Real keys a mistyped `key` may have meant: the same last name under another node
    (`train.lr` -> `optimizer.lr`), else the closest spellings."""
    import difflib

    keys = [k for k in config_keys(cfg) if k != key]
    leaf = key.rpartition(".")[2]
    # (a component group's key first: optimizer.lr before critic.lr and pretrain.lr)
    same_leaf = sorted((k for k in keys if k.rpartition(".")[2] == leaf), key=lambda k: k.split(".")[0] not in GROUPS)
    return same_leaf[:3] or difflib.get_close_matches(key, keys, n=3, cutoff=0.75)


def in_component(key: str, cfg: DictConfig) -> bool:
    """True when `key` is an argument of a component above it (the nearest node with a
    `_target_`: its class takes that name, or any keyword), or a key inside such an argument."""
    import inspect

    from hydra.utils import get_object

    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:i]))
        if isinstance(node, DictConfig) and "_target_" in node:
            if i < len(parts) - 1:  # inside an argument (a dict of rewards, the LoRA settings)
                return True
            if parts[0] in GROUPS and parts[0] != "model":  # validation builds it and names a bad argument
                return True
            from rlzoo.tasks.base import POLICY_SETTINGS

            if parts[0] == "model" and parts[i] in POLICY_SETTINGS:  # read by rlzoo.policies, not the class
                return True
            try:
                signature = inspect.signature(get_object(str(node._target_)))
            except Exception:  # (a target that does not import is reported where it is built)
                return True
            return parts[i] in signature.parameters or any(
                p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    return False



def _did_you_mean(key: str, cfg: DictConfig) -> str:
    near = nearest_keys(key, cfg)
    return f"; did you mean {near[0]}?" + (f" (or {', '.join(near[1:])})" if near[1:] else "") if near else ""


def _merge_error(exc: BaseException) -> str | None:
    """One line for a dict merged into a component node that lacks one of its keys (Hydra says
    "Could not override" as for a missing key): replacing a component needs ~key then +key."""
    import re

    match = re.search(r"Could not override '([^']+)'", str(exc))
    cause = exc.__cause__ or exc.__context__
    while cause is not None and "is not in struct" not in str(cause):
        cause = cause.__cause__ or cause.__context__
    missing = re.search(r"Key '([^']+)' is not in struct\s+full_key: (\S+)", str(cause)) if cause is not None else None
    if not match or not missing or not missing.group(2).startswith(match.group(1) + "."):
        return None  # (the key itself is not there: _unknown_key_error says so)
    key = match.group(1)
    return (f"{key}={{...}} merges into the {key} that is there, which has no key {missing.group(1)!r}; to put "
            f"another component there, delete it first: '~{key}' '+{key}={{_target_: ..., ...}}'")


def _unknown_key_error(message: str, overrides: list[str]) -> str:
    """One line for Hydra's "Could not override 'a.b'" (a key the config does not have): the
    nearest real keys, and `+key=...` only where something would read the key."""
    import re

    match = re.search(r"Could not override '([^']+)'", message)
    if not match:
        return " ".join(message.split())
    key = match.group(1)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose(config_name="config", overrides=[o for o in overrides if not o.split("=")[0].lstrip("+~") == key])
    parts = key.split(".")  # the first name on the path that is not there: `trian` in trian.iterations
    depth = next((i for i in range(1, len(parts) + 1) if OmegaConf.select(base, ".".join(parts[:i])) is None), len(parts))
    parent, leaf = ".".join(parts[:depth - 1]), parts[depth - 1]
    node = OmegaConf.select(base, parent) if parent else base
    valid = ", ".join(sorted(str(k) for k in node if str(k) != "hydra")) if isinstance(node, DictConfig) else "none"
    add = f"; it is optional: write +{key}=..." if key in OPTIONAL_KEYS else ""
    return (f"unknown key {key!r} ({leaf!r} is not a key of {parent or 'the config'}; valid: {valid})"
            f"{add or _did_you_mean(key, base)}")


def base_keys(overrides: list[str]) -> DictConfig:
    """The config without the `+`/`++` additions (the keys it has of itself)."""
    from hydra import compose, initialize_config_dir

    kept = [o for o in overrides if not o.startswith("+") or (CONF_DIR / o.lstrip("+").split("=")[0]).is_dir()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=kept)


def check_added_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """A `+key=value` that nothing reads is refused (it would be ignored silently): it must be
    an optional key (OPTIONAL_KEYS) or an argument of a component."""
    items = [o for o in overrides if o.startswith("+") and "=" in o]
    base = base_keys(overrides) if any(o.startswith("++") for o in items) else None
    for override in parse_overrides(items):
        key = override.key_or_group
        if override.input_line.startswith("++") and base is not None and OmegaConf.select(base, key) is not None:
            continue  # (++ on a key the config has: a plain override)
        if key.startswith("hydra") or "/" in key or any((d / key).is_dir() for d in _search_dirs):  # a group
            continue
        if key in OPTIONAL_KEYS or in_component(key, cfg):
            continue
        raise ConfigError(f"+{key}: nothing in rlzoo reads {key!r}, so it would be ignored{_did_you_mean(key, cfg)} "
                          f"(optional keys: {', '.join(OPTIONAL_KEYS)}; under a component's node, only its class's arguments)")


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config `rlzoo-train` would run, composed without starting a Hydra job."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    overrides = plain_sweep(list(overrides))
    check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    except HydraException as exc:  # a misspelt key, a bad value type: one line, not a traceback
        raise ConfigError(_merge_error(exc) or _unknown_key_error(str(exc), list(overrides))) from None
    check_added_keys(cfg, list(overrides))
    return cfg


def override_dict(overrides) -> dict[str, str]:
    """`key=value` command-line overrides as {key: value}; `+`/`~` prefixes dropped."""
    pairs = [str(o).split("=", 1) for o in overrides if "=" in str(o)]
    return {k.lstrip("+~"): v for k, v in pairs}
