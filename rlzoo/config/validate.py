"""Validation before compute: every check runs on the composed config alone, before any model is
built and before the run directory is touched, and fails with one line naming the bad value and
the valid choices (README, Validation before compute)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from rlzoo.config.build import BUILT_GROUPS, PARTIAL_GROUPS, build, needs_critic
from rlzoo.config.combinations import PIPELINE, combination_error
from rlzoo.config.compose import _load, available
from rlzoo.config.init_from import check_init_from
from rlzoo.errors import ConfigError
from rlzoo.old_policy import OLD_POLICY_SCHEDULES


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


def validate(cfg: DictConfig, check_model: bool = True) -> None:
    """All checks that need no model. Raises ConfigError."""
    _validate_numbers(cfg)
    _validate_lr_schedule(cfg)
    _validate_guidance(cfg)
    _validate_policy_settings(cfg.model)
    _validate_arguments(cfg)
    _validate_device(cfg)
    _validate_task(cfg)
    check_init_from(cfg)
    built = _validate_construction(cfg)
    _validate_combination(cfg, built)
    _validate_distributed(cfg)
    _check_components(cfg, built)
    _validate_critic(cfg, built)
    _validate_images(cfg, built["reward"])
    if check_model:  # the weights are where the config says, and LoRA targets exist (nothing loaded)
        _validate_files(cfg)


def _validate_files(cfg: DictConfig) -> None:
    """The base model's weights and every reward's files are where the config says (nothing loaded)."""
    try:
        _component_class(cfg.task).check_model(cfg.model, cfg.task.name)
        for reward in _rewards(cfg):
            reward.check()
    except Exception as exc:  # hydra wraps a constructor's error; report the constructor's own
        cause = exc.__cause__ or exc
        if not isinstance(cause, ValueError):
            raise
        raise ConfigError(" ".join(str(cause).split())) from None


def _validate_numbers(cfg: DictConfig) -> None:
    """Finite numbers, positive counts and sizes, seeds torch takes, the batch's divisions."""
    from rlzoo.ranges import first_non_finite

    found = first_non_finite(OmegaConf.to_container(cfg, resolve=True))
    if found:
        raise ConfigError(f"{found[0]}={found[1]} is not a finite number; no rlzoo key takes nan or inf "
                          f"(budgets and optional keys take null)")
    for key in ("train.iterations", "train.batch_size", "train.group_size", "train.micro_batch_size",
                "train.inner_epochs", "train.minibatches", "sampler.num_steps", "eval.num_steps", "eval.samples", "eval.every",
                "eval.batch_size"):
        _positive(cfg, key, int)
    for key in ("optimizer.lr", "train.max_grad_norm"):
        _positive(cfg, key, float)
    for key, kind in (("train.max_minutes", float), ("train.max_nfe", int), ("eval.every_nfe", int), ("eval.shift", float),
                      ("checkpoint_every", int), ("checkpoint_every_minutes", float), ("eval.teacher_steps", int),
                      ("threads", int)):
        if OmegaConf.select(cfg, key) is not None:
            _positive(cfg, key, kind)
    if OmegaConf.select(cfg, "eval.shift") is not None and OmegaConf.select(cfg, "sampler.schedule") is not None:
        raise ConfigError(f"eval.shift={cfg.eval.shift} is not read: the model family's sampler.schedule (model.schedule) "
                          f"sets every sampler's sigmas, the evaluation's too; drop eval.shift")
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
    if cfg.train.old_policy_schedule not in OLD_POLICY_SCHEDULES or isinstance(cfg.train.old_policy_schedule, bool):
        raise ConfigError(f"train.old_policy_schedule={cfg.train.old_policy_schedule!r}; "
                          f"valid: {', '.join(map(str, OLD_POLICY_SCHEDULES))}")


def _validate_device(cfg: DictConfig) -> None:
    """`device` names a device this machine has (rlzoo.distributed.check_device)."""
    from rlzoo.distributed import check_device

    try:
        check_device(str(cfg.device))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate_images(cfg: DictConfig, reward) -> None:
    """A reward that scores images (PickScore, CLIP, a remote GenEval) needs a task whose samples
    are images (shapes, t2i), for training (`reward`, built) and for the held-out evaluation alike."""
    task = _component_class(cfg.task)
    if task.makes_images:
        return
    rewards = {f"reward={_name(cfg.reward)}": reward,
               **{f"task.eval_rewards.{k}": build(v) for k, v in (cfg.task.get("eval_rewards") or {}).items()}}
    for what, built in rewards.items():
        if built.needs_images:
            raise ConfigError(f"{what} scores images, and task={cfg.task.get('name', '?')} makes none (its samples "
                              f"are not pictures); image rewards work on task=shapes and task=t2i")


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


def _check_components(cfg: DictConfig, built: dict) -> None:
    """Each component's own rules against the rest of the run (its `check_run(run)`, if it has
    one: rlzoo.types.SelfChecking), in one line each."""
    from rlzoo.distributed import world_from_env
    from rlzoo.types import RunContext, SelfChecking

    task, t = _component_class(cfg.task), cfg.train
    run = RunContext(int(cfg.sampler.num_steps), int(t.group_size), world_from_env()[1], str(cfg.task.get("name", "?")),
                     bool(task.supports_guidance), {group: _name(cfg[group]) for group in BUILT_GROUPS},
                     {"objective": tuple(available("objective"))}, float(t.old_policy_schedule),
                     int(t.inner_epochs) * int(t.minibatches), cfg.model.get("teacher", True) is not False,
                     cfg.model._target_.rsplit(".", 1)[-1])
    for component in built.values():
        if isinstance(component, SelfChecking):
            try:
                component.check_run(run)
            except ValueError as exc:
                raise ConfigError(" ".join(str(exc).split())) from None


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


def _validate_distributed(cfg: DictConfig) -> None:
    """train.rng and dist.*, and the ranks' geometry under torchrun (rlzoo.distributed.check_launch)."""
    from rlzoo.distributed import check_launch
    from rlzoo.rng import RNG_MODES

    mode = cfg.train.get("rng", "stream")
    if mode not in RNG_MODES:
        raise ConfigError(f"unknown train.rng {mode!r}; valid: {', '.join(RNG_MODES)}")
    if OmegaConf.select(cfg, "dist.timeout_s") is not None:
        _positive(cfg, "dist.timeout_s", float)
    try:
        check_launch(mode, int(cfg.train.batch_size), int(cfg.train.group_size), str(cfg.device))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate_critic(cfg: DictConfig, built: dict) -> None:
    """Paper B: DMD's critic is built from valid settings when the objective or the reward needs it
    (its teacher is their own check_run), and R_dm is no evaluation reward (its critic lives in
    the training run)."""
    if needs_critic(built["objective"], built["reward"]):
        try:
            build(cfg.critic)
        except Exception as exc:
            raise ConfigError(" ".join(str(exc.__cause__ or exc).split())) from None
    for name, node in (cfg.task.get("eval_rewards") or {}).items():
        if needs_critic(None, build(node)):
            raise ConfigError(f"task.eval_rewards.{name} uses R_dm, which needs the training run's critic; "
                              f"evaluate with another reward, e.g. task.eval_rewards.{name}="
                              f"'{{_target_: rlzoo.rewards.images.CLIPReward, path: DIR}}' (PickScore)")


def _validate_policy_settings(model: DictConfig) -> None:
    """The policy's own settings (rlzoo.policies.check_settings)."""
    from rlzoo.policies import check_settings

    try:
        check_settings(model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate_guidance(cfg: DictConfig) -> None:
    """Classifier-free guidance scales are >= 1 and need a task with an unconditional input."""
    task = _component_class(cfg.task)
    for key in ("sampler.cfg_scale", "eval.cfg_scale"):
        scale = OmegaConf.select(cfg, key, default=1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale >= 1:
            raise ConfigError(f"{key} must be a number >= 1 (1 = no guidance), got {scale!r}")
        if scale != 1 and not task.supports_guidance:
            guided = [n for n in available("task") if _component_class(_load("task", n).task).supports_guidance]
            raise ConfigError(f"{key}={scale} needs an unconditional (empty-prompt) input, which task "
                              f"{cfg.task.name!r} does not have; use {key}=1 or task={'|'.join(guided) or '?'}")


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
LIGHT_GROUPS = ("sampler", "estimator", "objective", "kl", "advantage", "optimizer", "lr_schedule", "reward")


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


def _name(node: DictConfig) -> str:
    return node.get("name", node.get("_target_", "?"))
