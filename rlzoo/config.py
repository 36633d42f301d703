"""Config composition and validation before compute.

Every check here runs on the composed config alone, before any model is built and before the
run directory is touched, and fails with one line naming the bad value and the valid choices.
"""
from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlzoo.errors import ConfigError, one_line_errors  # noqa: F401 (the commands import them from here)


def _conf_dir() -> Path:
    """The config tree: rlzoo/conf inside an installed package (`pip install .` ships conf/ there),
    else conf/ beside the package in the source tree (an editable install, a checkout)."""
    package = Path(__file__).resolve().parent
    shipped = package / "conf"
    return shipped if (shipped / "config.yaml").is_file() else package.parent / "conf"


CONF_DIR = _conf_dir()
GROUPS = ("task", "model", "sampler", "estimator", "objective", "advantage", "kl", "reward",
          "optimizer", "lr_schedule", "logger", "experiment", "debug", "prompts", "row", "sweep")


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


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


def _positive(cfg: DictConfig, key: str, kind=float) -> None:
    if kind is int:
        _in_range(cfg, key, 1, integer=True)
    else:
        _in_range(cfg, key, 0, low_open=True)


def _in_range(cfg: DictConfig, key: str, low=None, high=None, **kwargs) -> None:
    """`key`'s value within its range (rlzoo.ranges.check), else a ConfigError of one line."""
    from rlzoo.ranges import check

    try:
        check(key, OmegaConf.select(cfg, key), low, high, **kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _non_finite(node, prefix: str = ""):
    """(key, value) of the first NaN or infinite number anywhere in a plain container, or None."""
    import math

    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{prefix}{key}", value
        found = _non_finite(value, f"{prefix}{key}.")
        if found:
            return found
    return None


def validate(cfg: DictConfig, check_model: bool = True) -> None:
    """All checks that need no model. Raises ConfigError."""
    found = _non_finite(OmegaConf.to_container(cfg, resolve=True))
    if found:
        raise ConfigError(f"{found[0]}={found[1]} is not a finite number; no rlzoo key takes nan or inf "
                          f"(budgets and optional keys take null)")
    for key in ("train.iterations", "train.batch_size", "train.group_size", "train.micro_batch_size",
                "train.inner_epochs", "train.minibatches", "sampler.num_steps", "eval.num_steps", "eval.samples", "eval.every",
                "eval.batch_size"):
        _positive(cfg, key, int)
    for key in ("optimizer.lr", "train.max_grad_norm"):
        _positive(cfg, key, float)
    for key, kind in (("train.max_minutes", float), ("train.max_nfe", int), ("eval.every_nfe", int),
                      ("checkpoint_every", int), ("eval.teacher_steps", int), ("threads", int)):
        if OmegaConf.select(cfg, key) is not None:
            _positive(cfg, key, kind)
    for key in ("seed", "eval.seed"):  # what torch.Generator.manual_seed takes
        _in_range(cfg, key, -2**63, 2**63 - 1, integer=True)
    _in_range(cfg, "eval.ema_cap", 0, 1, high_open=True, note="the cap of the evaluation EMA's decay")
    batch, group = int(cfg.train.batch_size), int(cfg.train.group_size)
    if batch % group:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        raise ConfigError(f"train.group_size={group} does not divide train.batch_size={batch}; "
                          f"valid group sizes: {', '.join(map(str, divisors))}")
    groups, minibatches = batch // group, int(cfg.train.minibatches)
    if groups % minibatches:
        valid = [d for d in range(1, groups + 1) if groups % d == 0]
        raise ConfigError(f"train.minibatches={minibatches} does not divide the {groups} prompt groups "
                          f"per batch; valid: {', '.join(map(str, valid))}")
    if cfg.train.old_policy_schedule not in (0, 1, 2) or isinstance(cfg.train.old_policy_schedule, bool):
        raise ConfigError(f"train.old_policy_schedule={cfg.train.old_policy_schedule!r}; valid: 0, 1, 2")
    _validate_lr_schedule(cfg)
    _validate_ratio(cfg)
    _validate_guidance(cfg)
    _validate_policy_settings(cfg.model)
    _validate_arguments(cfg)
    _validate_task(cfg)
    built = _validate_construction(cfg)
    _validate_combination(cfg, built)
    _validate_steps(cfg, built)
    reward = _validate_distillation(cfg, built["objective"])
    _validate_group_size(cfg, built["advantage"], reward)
    if check_model:  # the weights are where the config says, and LoRA targets exist (nothing loaded)
        try:
            _component_class(cfg.task).check_model(cfg.model, cfg.task.name)
            for reward in _rewards(cfg):
                reward.check()
        except Exception as exc:  # hydra wraps a constructor's error; report the constructor's own
            cause = exc.__cause__ or exc
            if not isinstance(cause, ValueError):
                raise
            raise ConfigError(" ".join(str(cause).split())) from None


def _validate_task(cfg: DictConfig) -> None:
    """Build the task (prompts and splits, no model): its own checks (a prompt file that does not
    exist, a held-out fraction outside (0, 1)) fail here, before the run directory is touched."""
    try:
        build(cfg.task)
    except Exception as exc:  # hydra wraps the constructor's error (twice for a nested prompt set)
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if not isinstance(cause, (ValueError, TypeError, OSError)):
            raise
        raise ConfigError(f"task={cfg.task.get('name', '?')}: {' '.join(str(cause).split())}") from None


def _validate_lr_schedule(cfg: DictConfig) -> None:
    """torch's schedulers accept factors and lengths that silently freeze the learning rate (a
    warm-up of 0 steps stays at start_factor·lr forever)."""
    node = cfg.lr_schedule
    for key in ("factor", "start_factor", "end_factor"):
        if key in node:
            _in_range(cfg, f"lr_schedule.{key}", 0, 1, low_open=True, note="a multiple of optimizer.lr")
    if "total_iters" in node:
        constant = node.get("factor", None) == 1
        _in_range(cfg, "lr_schedule.total_iters", 0 if constant else 1, integer=True, note="optimizer steps")


def _validate_steps(cfg: DictConfig, built: dict) -> None:
    """Counts that must fit the sampler's schedule: ELBO terms on its steps, the trajectory
    estimator's fraction of them."""
    steps, estimator = int(cfg.sampler.num_steps), built["estimator"]
    terms = getattr(estimator, "num_terms", None)
    if terms is not None and getattr(estimator, "timesteps", None) == "sampler" and terms > steps:
        raise ConfigError(f"estimator.num_terms={terms} is more than the sampler's {steps} steps it draws from "
                          f"(estimator.timesteps=sampler); use 1..{steps}, or estimator.timesteps=uniform")
    fraction = getattr(estimator, "timestep_fraction", None)
    if fraction is not None and int(steps * fraction) < 1:
        raise ConfigError(f"estimator.timestep_fraction={fraction:g} trains no step of the {steps}-step schedule; "
                          f"use a fraction >= {1 / steps:g}")


def _validate_group_size(cfg: DictConfig, advantage, reward) -> None:
    """A group advantage (or a reward normalised per group) of a group of one is identically 0."""
    group = int(cfg.train.group_size)
    for what, component in ((f"advantage={_name(cfg.advantage)}", advantage),
                            (f"reward={_name(cfg.reward)} (reward.normalize=group)", reward)):
        needed = getattr(component, "min_group_size", 1)
        if group < needed:
            raise ConfigError(f"train.group_size={group} gives every sample a zero advantage with {what} (a group's "
                              f"own mean is subtracted); use train.group_size>={needed}"
                              + (" or advantage=global_std" if component is advantage else ""))


def _rewards(cfg: DictConfig) -> list:
    """The training reward and the task's evaluation rewards, built (cheap: they load lazily)."""
    nodes = [cfg.reward, *(cfg.task.get("eval_rewards") or {}).values()]
    return [build(node) for node in nodes]


def _component_class(node: DictConfig):
    from hydra.utils import get_class

    return get_class(node._target_)


def _validate_combination(cfg: DictConfig, built: dict) -> None:
    from rlzoo.types import TERM_FIELDS

    vocabulary = TERM_FIELDS | ROLLOUT_FIELDS
    for group in PIPELINE:  # a misspelt declaration would otherwise read as "never provided"
        for attribute in ("needs", "provides", "sampler_needs"):
            unknown = sorted(set(getattr(built[group], attribute, frozenset())) - vocabulary)
            if unknown:
                raise ConfigError(f"{group}={_name(cfg[group])} declares {attribute} {unknown}, which are not fields "
                                  f"of a rollout or a likelihood term; valid: {', '.join(sorted(vocabulary))}")
    error = combination_error(built, {g: _name(cfg[g]) for g in PIPELINE})
    if error:
        raise ConfigError(error)


def _validate_distillation(cfg: DictConfig, objective):
    """Paper B's components: a critic needs a teacher (a pretrained base model) and valid critic
    settings; a guided DMD teacher needs a task with an empty prompt; R_dm cannot be an evaluation
    reward (its critic lives in the training run)."""
    try:
        reward = build(cfg.reward)
    except Exception as exc:  # hydra wraps the constructor's error; report the constructor's own
        raise ConfigError(f"reward={_name(cfg.reward)}: {' '.join(str(exc.__cause__ or exc).split())}") from None
    if needs_critic(objective, reward):
        _validate_critic(cfg, objective, reward)
    for name, node in (cfg.task.get("eval_rewards") or {}).items():
        if needs_critic(None, build(node)):
            raise ConfigError(f"task.eval_rewards.{name} uses R_dm, which needs the training run's critic; "
                              f"evaluate with another reward, e.g. task.eval_rewards.{name}="
                              f"'{{_target_: rlzoo.rewards.images.CLIPReward, path: DIR}}' (PickScore)")
    return reward


def _validate_critic(cfg: DictConfig, objective, reward) -> None:
    """The critic's settings, a teacher with pretrained weights, a guidable task for a guided teacher."""
    users = [f"objective={_name(cfg.objective)}"] if getattr(objective, "needs_critic", False) else []
    users += [f"reward={_name(cfg.reward)}"] if needs_critic(None, reward) else []
    if cfg.model.get("teacher", True) is False:
        raise ConfigError(f"{' and '.join(users)} distils from the base model as teacher, but model.teacher="
                          f"false ({cfg.model._target_.rsplit('.', 1)[-1]} has random weights); use a pretrained model "
                          f"(task=toy2d, task=shapes, model=sd35m) or model.teacher=true for a plumbing test")
    try:
        build(cfg.critic)
    except Exception as exc:
        raise ConfigError(" ".join(str(exc.__cause__ or exc).split())) from None
    scale = float(getattr(objective, "teacher_cfg_scale", 1.0))
    if scale != 1.0 and not _component_class(cfg.task).supports_guidance:
        raise ConfigError(f"objective.teacher_cfg_scale={scale:g} needs classifier-free guidance, which "
                          f"task={cfg.task.name} does not support; use objective.teacher_cfg_scale=1")


def _validate_ratio(cfg: DictConfig) -> None:
    """A ratio to the old policy is identically 1 when the old policy is the current one
    (schedule 0) and each rollout gets a single update: the objective silently becomes its
    no-ratio version, which is almost certainly not what the user meant."""
    t = cfg.train
    if (getattr(_component_class(cfg.objective), "uses_ratio", False)
            and int(t.old_policy_schedule) == 0 and int(t.inner_epochs) * int(t.minibatches) == 1):
        alternative = (f"objective={cfg.objective.name}_noratio, " if
                       f"{cfg.objective.name}_noratio" in available("objective") else "")
        raise ConfigError(
            f"objective={cfg.objective.name} uses the ratio to the old policy, but with "
            f"train.old_policy_schedule=0 and one update per rollout (train.inner_epochs=1, "
            f"train.minibatches=1) that ratio is always 1; use {alternative}"
            f"train.old_policy_schedule=1 or 2, or train.inner_epochs>1 / train.minibatches>1")


def _validate_policy_settings(model: DictConfig) -> None:
    """model.precision / lora / gradient_checkpointing / compile / max_batch_size (rlzoo.policies)."""
    from rlzoo.policies import PRECISIONS, LoraSettings

    precision = model.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown model.precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    for key in ("gradient_checkpointing", "compile"):
        if not isinstance(model.get(key, False), bool):
            raise ConfigError(f"model.{key} must be true or false, got {model.get(key)!r}")
    rows = model.get("max_batch_size")
    if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
        raise ConfigError(f"model.max_batch_size must be a positive int or null, got {rows!r}")
    if model.get("lora") is not None:
        try:
            LoraSettings(**OmegaConf.to_container(model.lora, resolve=True))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model.lora: {' '.join(str(exc).split())}") from None


def _validate_guidance(cfg: DictConfig) -> None:
    """Classifier-free guidance scales are >= 1 and need a task with an unconditional input."""
    task = _component_class(cfg.task)
    for key in ("sampler.cfg_scale", "eval.cfg_scale"):
        scale = OmegaConf.select(cfg, key, default=1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale >= 1:
            raise ConfigError(f"{key} must be a number >= 1 (1 = no guidance), got {scale!r}")
        if scale != 1 and not getattr(task, "supports_guidance", False):
            guided = [n for n in available("task") if getattr(_component_class(_load("task", n).task),
                                                                 "supports_guidance", False)]
            raise ConfigError(f"{key}={scale} needs an unconditional (empty-prompt) input, which task "
                              f"{cfg.task.name!r} does not have; use {key}=1 or task={'|'.join(guided) or '?'}")


# Groups instantiated from their YAML by `build` (the model is built by its task); the
# PARTIAL_GROUPS are built as factories, applied to the policy's parameters and to the optimizer.
BUILT_GROUPS = ("task", "sampler", "estimator", "objective", "advantage", "kl", "reward",
                "optimizer", "lr_schedule")
PARTIAL_GROUPS = ("optimizer", "lr_schedule")


def _validate_arguments(cfg: DictConfig) -> None:
    """Every key of a component's node is an argument of its constructor, so a typo, or a key a
    recipe set for another component (e.g. ELBO knobs after estimator=trajectory), fails here
    rather than after minutes of set-up."""
    import inspect

    for group in BUILT_GROUPS:
        node = cfg[group]
        params = inspect.signature(_component_class(node)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        unknown = sorted(set(node) - {"_target_", "name"} - set(params))
        if unknown:
            raise ConfigError(
                f"{group}={node.get('name', node._target_)} takes no argument "
                f"{', '.join(repr(k) for k in unknown)}; its arguments: {', '.join(params) or 'none'}")


# Components cheap to build from their config alone (no model, no weights): validation builds
# them, so their own argument checks (an unknown weighting, a window outside the schedule, a
# negative learning rate) fail before the run directory is touched.
LIGHT_GROUPS = ("sampler", "estimator", "objective", "kl", "advantage", "optimizer", "lr_schedule")


def _validate_construction(cfg: DictConfig) -> dict:
    """Build the light components (the optimizer on a stand-in parameter, the real ones need the
    model; the lr schedule on that optimizer); returns them by group."""
    import torch

    built: dict = {}
    for group in LIGHT_GROUPS:
        try:
            built[group] = build(cfg[group], _partial_=group in PARTIAL_GROUPS)
            if group == "optimizer":
                built[group] = built[group]([torch.nn.Parameter(torch.zeros(1))])
            elif group == "lr_schedule":
                built[group] = built[group](built["optimizer"])
        except Exception as exc:  # hydra wraps the constructor's error; report the constructor's own
            cause = exc.__cause__ or exc
            message = " ".join(str(cause).split())
            raise ConfigError(f"{group}={_name(cfg[group])}: {message}") from None
    return built


def _load(group: str, name: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / group / f"{name}.yaml")


def _name(node: DictConfig) -> str:
    return node.get("name", node.get("_target_", "?"))


# Who provides what to whom: a sampler's Rollout feeds the estimator, whose LikelihoodTerm feeds
# the objective and the KL. Each component declares `needs` and `provides` (sets of field names:
# rlzoo.types.TERM_FIELDS, and ROLLOUT_FIELDS for what a sampler's rollout can carry).
ROLLOUT_FIELDS = frozenset({"trajectory", "differentiable_sample"})
PIPELINE = ("sampler", "estimator", "objective", "kl")
PROVIDER = {"estimator": "sampler", "objective": "estimator", "kl": "estimator"}
# (consumer, provider, the consumer's attribute listing what it needs from that provider)
LINKS = (*((c, p, "needs") for c, p in PROVIDER.items()), ("objective", "sampler", "sampler_needs"))


def combination_error(components: dict, names: dict) -> str | None:
    """Why these components cannot run together, or None: some component `needs` a field its
    provider does not `provide`. The message names both, the provider's own reason when it has
    one, and the choices of either group that would fit (with their YAML defaults)."""
    for consumer, provider, attribute in LINKS:
        needs = getattr(components[consumer], attribute, frozenset())
        missing = sorted(needs - components[provider].provides)
        if not missing:
            continue
        fields = ", ".join(missing)
        reason = getattr(components[provider], "missing_reason", lambda f: None)(missing[0])
        message = (f"{consumer}={names[consumer]} needs {fields} from {provider}={names[provider]}, "
                   f"which does not provide {'it' if len(missing) == 1 else 'them'}")
        if reason:
            return f"{message}: {reason}"
        providers = [n for n in available(provider) if not needs - _declared(provider, n, "provides")]
        consumers = [n for n in available(consumer)
                     if not _declared(consumer, n, attribute) - components[provider].provides]
        options = [f"{provider}={n}" for n in providers] + [f"{consumer}={n}" for n in consumers]
        if not options:
            return f"{message}; no installed choice of either group fits"
        return f"{message}; use {', '.join(options[:-1])}{' or ' if len(options) > 1 else ''}{options[-1]}"
    return None


def _declared(group: str, name: str, what: str) -> frozenset:
    """A choice's `needs` / `provides` as its class declares them (its YAML defaults)."""
    return getattr(_component_class(_load(group, name)), what, frozenset())


def valid_grid() -> list[tuple[str, str, str]]:
    """Every (objective, estimator, sampler) whose declared needs are provided (kl=none)."""
    objectives = {o: (_declared("objective", o, "needs"), _declared("objective", o, "sampler_needs"))
                  for o in available("objective")}
    estimators = {e: (_declared("estimator", e, "needs"), _declared("estimator", e, "provides"))
                  for e in available("estimator")}
    samplers = {s: _declared("sampler", s, "provides") for s in available("sampler")}
    return [(o, e, s) for o, (needs, o_sampler) in objectives.items()
            for e, (e_needs, e_provides) in estimators.items() for s, s_provides in samplers.items()
            if not (needs - e_provides or e_needs - s_provides or o_sampler - s_provides)]


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """The run directory can hold this run (rlzoo.runs.directory: a folder that is empty or holds a
    run, with no links where rlzoo writes), and a run already there is this one: the same config
    (RESUMABLE_KEYS aside) in its config.yaml and in its checkpoint's record, a checkpoint that
    can be read. A run is there once it has started (config.yaml beside a checkpoint, or beside a
    completed summary); a start that failed before its first checkpoint claims nothing, so the
    corrected command runs into the same directory. Nothing is written."""
    from rlzoo.runs.directory import check_run_dir_layout
    from rlzoo.runs.files import checkpoint_path, peek_checkpoint
    from rlzoo.runs.summary import read_summary

    run_dir = Path(run_dir)
    check_run_dir_layout(run_dir)
    saved, checkpoint = run_dir / "config.yaml", checkpoint_path(run_dir)
    summary = read_summary(run_dir) or {}
    completed = summary.get("status") == "completed"
    if not saved.exists() or not (checkpoint.exists() or completed):
        return
    try:
        old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    except Exception as exc:  # a damaged config.yaml: the directory still holds a run
        raise ConfigError(f"run directory {run_dir} holds a run whose config.yaml cannot be read "
                          f"({type(exc).__name__}); choose another run_dir=...") from None
    new = run_fingerprint(cfg)
    diffs = config_differences(old if isinstance(old, dict) else {}, new)
    if diffs:
        raise ConfigError(
            f"run directory {run_dir} holds a run with a different config (differs in {', '.join(diffs[:5])}); "
            f"choose another run_dir=... or delete that directory")
    if checkpoint.exists():
        from rlzoo.errors import CheckpointError

        diffs = config_differences(peek_checkpoint(checkpoint).get("run"), new)
        if diffs:
            raise CheckpointError(f"checkpoint {checkpoint} was written by a run with another config (differs in "
                                  f"{', '.join(diffs[:5])}); it was left in place: choose another run_dir=...")
    else:
        from rlzoo.runs.progress import is_finished

        if not is_finished(summary, cfg.train):
            raise ConfigError(f"run directory {run_dir} holds a completed run of {summary.get('iterations')} "
                              f"iterations whose checkpoint is gone, so it cannot be continued; choose another "
                              f"run_dir=...")


def run_fingerprint(cfg: DictConfig) -> dict:
    """The resolved config as plain values: what a checkpoint and config.yaml record of a run."""
    return OmegaConf.to_container(cfg, resolve=True)


def config_differences(old: dict | None, new: dict) -> list[str]:
    """Keys whose values differ between two runs' configs, except those a resumed run may change
    (RESUMABLE_KEYS); none when `old` is unknown (a checkpoint from before fingerprints)."""
    if not isinstance(old, dict):
        return []
    return [k for k in _diff(old, new) if not k.startswith(RESUMABLE_KEYS)]


# Keys that may change when a run is resumed: they do not change what is trained (sweep_name only
# names where a sweep writes, so a run copied into another sweep with a larger budget resumes;
# run_dir only where the run lives, so a moved or copied run resumes in its new place;
# evaluations draw from their own fixed noise, so how often they happen changes no update).
RESUMABLE_KEYS = ("train.iterations", "train.max_minutes", "train.max_nfe", "progress_bar", "logger", "threads",
                  "sweep_name", "run_dir", "eval.every", "eval.every_nfe", "eval.teacher_steps",
                  "task.embedding_cache")


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def build(node: DictConfig | dict, recursive: bool = True, **kwargs):
    """Instantiate a component and, first, the components inside it (Hydra's recursive
    instantiation: a mix's parts, DMDR's policy-gradient objective, t2i's prompt set and
    evaluation rewards), so a component receives built objects and never builds its own. A
    component's `name` key labels runs and is not a constructor argument. `recursive=False` for a
    component handed plain data that may hold targets (a logger's copy of the run's config)."""
    from hydra.utils import instantiate

    if not isinstance(node, DictConfig):  # a config node keeps its parent (interpolations resolve)
        node = OmegaConf.create(node)
    params = _without_names(OmegaConf.to_container(node, resolve=True))
    return instantiate(params, _recursive_=recursive, _convert_="all", **kwargs)


def _without_names(node):
    """A plain config with the `name` key dropped from every component node (one with `_target_`)."""
    if isinstance(node, dict):
        return {k: _without_names(v) for k, v in node.items() if not (k == "name" and "_target_" in node)}
    if isinstance(node, list):
        return [_without_names(v) for v in node]
    return node


def build_components(cfg: DictConfig, loggers: list | None = None):
    """Every component the trainer takes, built from the composed config."""
    from rlzoo.types import Components

    built = {group: build(cfg[group], _partial_=group in PARTIAL_GROUPS) for group in BUILT_GROUPS}
    learners = []
    if needs_critic(built["objective"], built["reward"]):  # one critic, shared by both
        critic = build(cfg.critic)
        for component in (built["objective"], built["reward"]):
            if component.needs_critic:
                component.use_critic(critic)
        learners.append(critic)
    return Components(**built, loggers=list(loggers or []), learners=learners)


def needs_critic(objective, reward) -> bool:
    """Whether DMD's fake score is needed: objective=dmd / dmdr, or reward=dm (also inside a mix)."""
    return any(c.needs_critic for c in (objective, reward) if c is not None)


def override_dict(overrides) -> dict[str, str]:
    """`key=value` command-line overrides as {key: value}; `+`/`~` prefixes dropped."""
    pairs = [str(o).split("=", 1) for o in overrides if "=" in str(o)]
    return {k.lstrip("+~"): v for k, v in pairs}


# ------------------------------------------------------------------ a run's files are data, not code
@functools.lru_cache(maxsize=1)
def shipped_targets() -> frozenset[str]:
    """Every `_target_` named in the shipped config tree: the components rlzoo will build from a
    config it did not compose itself (a run directory's config.yaml, an export's config.json)."""
    targets: set[str] = set()
    for path in CONF_DIR.rglob("*.yaml"):
        _collect_targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False), targets)
    return frozenset(targets)


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


def load_untrusted_config(path: Path, overrides: list[str] = ()) -> DictConfig:
    """A run directory's config.yaml as data: read with a safe YAML loader, every `_target_`
    checked (`check_untrusted`), then `key=value` overrides applied to keys it already has (an
    unknown key is refused as rlzoo-train refuses one). Targets named in `overrides` are the
    user's own and trusted. Validated like a config rlzoo-train composes."""
    path = Path(path)
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # a YAML error, an unreadable file
        raise ConfigError(f"{path} is not a readable config ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:160]})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path} is not a config (it holds a {type(loaded).__name__})")
    container = OmegaConf.to_container(loaded, resolve=False)
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
    return cfg


def _parse_value(text: str):
    """A command-line value as Hydra types it (1 -> int, 1e-4 -> float, true -> bool, null)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"key={text}").value()
    except Exception:
        return text
