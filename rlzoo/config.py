"""Config composition and validation before compute.

Every check here runs on the composed config alone, before any model is built and before the
run directory is touched, and fails with one line naming the bad value and the valid choices.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"  # package data: ships with `pip install .`
GROUPS = ("task", "model", "sampler", "estimator", "objective", "advantage", "kl", "reward",
          "optimizer", "lr_schedule", "logger", "experiment", "debug", "prompts", "row", "sweep")


class ConfigError(ValueError):
    """A configuration that cannot run; the message is one line."""


def one_line_errors(prog: str):
    """Decorator for a command's `main`: bad input (ConfigError) or a damaged checkpoint
    (CheckpointError) is one line on stderr and exit code 2, not a traceback."""
    import functools
    import sys

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            from rlzoo.runs.files import CheckpointError

            try:
                return main(*args, **kwargs)
            except (ConfigError, CheckpointError) as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
        return run
    return wrap


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
    value = OmegaConf.select(cfg, key)
    if value is None or not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive {kind.__name__}, got {value!r}")
    if kind is int and int(value) != value:
        raise ConfigError(f"{key} must be a positive int, got {value!r}")


def validate(cfg: DictConfig, check_model: bool = True) -> None:
    """All checks that need no model. Raises ConfigError."""
    for key in ("train.iterations", "train.batch_size", "train.group_size", "train.micro_batch_size",
                "train.inner_epochs", "train.minibatches", "sampler.num_steps", "eval.num_steps", "eval.samples", "eval.every",
                "eval.batch_size"):
        _positive(cfg, key, int)
    for key in ("optimizer.lr", "train.max_grad_norm"):
        _positive(cfg, key, float)
    for key, kind in (("train.max_minutes", float), ("train.max_nfe", int), ("eval.every_nfe", int),
                      ("checkpoint_every", int)):
        if OmegaConf.select(cfg, key) is not None:
            _positive(cfg, key, kind)
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
    if int(cfg.train.old_policy_schedule) not in (0, 1, 2):
        raise ConfigError(f"train.old_policy_schedule={cfg.train.old_policy_schedule!r}; valid: 0, 1, 2")
    _validate_ratio(cfg)
    _validate_guidance(cfg)
    _validate_policy_settings(cfg.model)
    _validate_arguments(cfg)
    built = _validate_construction(cfg)
    _validate_combination(cfg, built)
    _validate_distillation(cfg, built["objective"])
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


def _rewards(cfg: DictConfig) -> list:
    """The training reward and the task's evaluation rewards, built (cheap: they load lazily)."""
    nodes = [cfg.reward, *(cfg.task.get("eval_rewards") or {}).values()]
    return [build(node) for node in nodes]


def _component_class(node: DictConfig):
    from hydra.utils import get_class

    return get_class(node._target_)


def _validate_combination(cfg: DictConfig, built: dict) -> None:
    error = combination_error(built, {g: _name(cfg[g]) for g in PIPELINE})
    if error:
        raise ConfigError(error)


def _validate_distillation(cfg: DictConfig, objective) -> None:
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
LIGHT_GROUPS = ("sampler", "estimator", "objective", "advantage", "kl", "optimizer", "lr_schedule")


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
# rlzoo.types.TERM_FIELDS, and "trajectory" for a rollout that keeps its stochastic steps).
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
    """A run directory holding a different run's config is never resumed into or overwritten."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        return
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    new = OmegaConf.to_container(cfg, resolve=True)
    diffs = [k for k in _diff(old, new) if not k.startswith(RESUMABLE_KEYS)]
    if diffs:
        raise ConfigError(
            f"run directory {run_dir} holds a run with a different config (differs in {', '.join(diffs[:5])}); "
            f"choose another run_dir=... or delete that directory")


# Keys that may change when a run is resumed: they do not change what is trained (sweep_name only
# names where a sweep writes, so a run copied into another sweep with a larger budget resumes;
# evaluations draw from their own fixed noise, so how often they happen changes no update).
RESUMABLE_KEYS = ("train.iterations", "train.max_minutes", "train.max_nfe", "progress_bar", "logger", "threads",
                  "sweep_name", "eval.every", "eval.every_nfe", "eval.teacher_steps", "task.embedding_cache")


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def build(node: DictConfig | dict, **kwargs):
    """Instantiate a component (a config node, or the plain dict a component holds for a nested
    one); its `name` key labels runs and is not a constructor argument."""
    from hydra.utils import instantiate

    if not isinstance(node, DictConfig):  # a config node keeps its parent (interpolations resolve)
        node = OmegaConf.create(node)
    params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "name"}
    return instantiate(params, _recursive_=False, _convert_="all", **kwargs)


def build_components(cfg: DictConfig, loggers: list | None = None):
    """Every component the trainer takes, built from the composed config."""
    from rlzoo.types import Components

    built = {group: build(cfg[group], _partial_=group in PARTIAL_GROUPS) for group in BUILT_GROUPS}
    critic = build(cfg.critic) if needs_critic(built["objective"], built["reward"]) else None
    return Components(**built, loggers=list(loggers or []), critic=critic)


def needs_critic(objective, reward) -> bool:
    """Whether DMD's fake score is needed: objective=dmd / dmdr, or reward=dm (also inside a mix)."""
    return any(getattr(c, "needs_critic", False) for c in (objective, reward))


def override_dict(overrides) -> dict[str, str]:
    """`key=value` command-line overrides as {key: value}; `+`/`~` prefixes dropped."""
    pairs = [str(o).split("=", 1) for o in overrides if "=" in str(o)]
    return {k.lstrip("+~"): v for k, v in pairs}
