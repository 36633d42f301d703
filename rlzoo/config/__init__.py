"""Config composition, validation before compute, and building the components.

    compose   the shipped config tree (conf/) and the command line's overrides -> a config
    validate  every check that needs no model, each a one-line ConfigError
    build     components from a config (recursively: a component receives its parts built)
    run_dir   a run directory's name, and whether it can hold this run (the resume rules)
    untrusted a run directory's config.yaml, read as data

The commands import what they need from here.
"""
from omegaconf import OmegaConf

from rlzoo.config.build import BUILT_GROUPS, PARTIAL_GROUPS, build, build_components, needs_critic, plain
from rlzoo.config.combinations import combination_error, valid_grid
from rlzoo.config.compose import (
    CONF_DIR,
    GROUPS,
    available,
    check_overrides,
    compose_config,
    override_dict,
    override_values,
    parse_overrides,
)
from rlzoo.config.run_dir import (
    RESUMABLE_KEYS,
    check_run_dir,
    check_sweep_name,
    config_differences,
    path_component,
    run_fingerprint,
    run_variant,
)
from rlzoo.config.untrusted import check_untrusted, load_untrusted_config, shipped_targets
from rlzoo.config.validate import validate
from rlzoo.errors import ConfigError, one_line_errors

# conf/config.yaml names a sweep's run directories through it (hydra.sweep.subdir): one path component each
OmegaConf.register_new_resolver("rlzoo.path_component", path_component, replace=True)


def null_if_set(value, default):
    """`default`, or null where `value` is set: conf/task/t2i.yaml's sampler.shift is SD3.5's 3.0
    unless the model family brings its own schedule rule, which then alone sets the sigmas."""
    return default if value is None else None


OmegaConf.register_new_resolver("rlzoo.null_if_set", null_if_set, replace=True)

__all__ = ["BUILT_GROUPS", "CONF_DIR", "GROUPS", "PARTIAL_GROUPS", "RESUMABLE_KEYS", "ConfigError", "available",
           "build", "build_components", "check_overrides", "check_run_dir", "check_sweep_name", "check_untrusted", "combination_error",
           "compose_config", "config_differences", "load_untrusted_config", "needs_critic", "one_line_errors",
           "override_dict", "plain", "override_values", "parse_overrides", "path_component", "run_fingerprint", "run_variant",
           "shipped_targets",
           "valid_grid", "validate"]
