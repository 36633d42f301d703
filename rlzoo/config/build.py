"""Building components from a composed config (Hydra instantiation, recursive)."""
from __future__ import annotations

from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

# Groups instantiated from their YAML by `build` (the model is built by its task); the
# PARTIAL_GROUPS are built as factories, applied to the policy's parameters and to the optimizer.
BUILT_GROUPS = ("task", "sampler", "estimator", "objective", "advantage", "kl", "reward",
                "optimizer", "lr_schedule")


PARTIAL_GROUPS = ("optimizer", "lr_schedule")


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


def plain(node) -> dict[str, Any]:
    """A config node as plain, resolved Python values (a dict: every node rlzoo reads whole is one)."""
    return cast(dict, OmegaConf.to_container(node, resolve=True))


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
    use_headline(built["task"], built["reward"])
    learners = []
    if needs_critic(built["objective"], built["reward"]):  # one critic, shared by both
        critic = build(cfg.critic)
        for component in (built["objective"], built["reward"]):
            if component.needs_critic:
                component.use_critic(critic)
        learners.append(critic)
    return Components(**built, loggers=list(loggers or []), learners=learners)


def use_headline(task, reward) -> None:
    """A run that trains on a reward of its own (not the task's verifier, a mix or a learnt one) is
    measured by it: the held-out evaluation's headline `reward` is that reward's mean, with the
    task's verifier beside it as `verifier` (tasks with a verifier; t2i reports its rewards already)."""
    if task.has_verifier and getattr(reward, "headline", True):  # (a user's reward needs no base class)
        task.headline_reward = reward


def needs_critic(objective, reward) -> bool:
    """Whether DMD's fake score is needed: objective=dmd / dmdr, or reward=dm (also inside a mix)."""
    return any(c.needs_critic for c in (objective, reward) if c is not None)
