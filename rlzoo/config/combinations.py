"""The one generic rule between components (README, Architecture): each declares what it `needs`
and `provides`, and a sampler's Rollout feeds the estimator, whose LikelihoodTerm feeds the
objective and the KL. `combination_error` says why chosen components cannot run together;
`valid_grid` lists every objective x estimator x sampler that can (`rlzoo-train --list`)."""
from __future__ import annotations

from rlzoo.config.compose import _load, available

# Who provides what to whom: a sampler's Rollout feeds the estimator, whose LikelihoodTerm feeds
# the objective and the KL. Each component declares `needs` and `provides` (sets of field names:
# rlzoo.types.TERM_FIELDS, and ROLLOUT_FIELDS for what a sampler's rollout can carry).
ROLLOUT_FIELDS = frozenset({"trajectory", "differentiable_sample"})


PIPELINE = ("sampler", "estimator", "objective", "kl")


PROVIDER = {"estimator": "sampler", "objective": "estimator", "kl": "estimator"}


# (consumer, provider, the consumer's attribute listing what it needs from that provider)
LINKS = (*((c, p, "needs") for c, p in PROVIDER.items()), ("objective", "sampler", "sampler_needs"))


# What each group's components declare (rlzoo.types: the protocols' members)
DECLARATIONS = {"sampler": ("needs", "provides"), "estimator": ("needs", "provides"),
                "objective": ("needs", "sampler_needs"), "kl": ("needs",)}


def declaration_error(components: dict, names: dict) -> str | None:
    """A declaration outside the vocabulary of rollout and likelihood-term fields (a misspelt one
    would otherwise read as "never provided"), or None."""
    from rlzoo.types import TERM_FIELDS

    vocabulary = TERM_FIELDS | ROLLOUT_FIELDS
    for group, attributes in DECLARATIONS.items():
        for attribute in attributes:
            unknown = sorted(set(getattr(components[group], attribute)) - vocabulary)
            if unknown:
                return (f"{group}={names[group]} declares {attribute} {unknown}, which are not fields of a rollout "
                        f"or a likelihood term; valid: {', '.join(sorted(vocabulary))}")
    return None


def combination_error(components: dict, names: dict) -> str | None:
    """Why these components cannot run together, or None: some component `needs` a field its
    provider does not `provide`. The message names both, the provider's own reason when it has
    one, and the choices of either group that would fit (with their YAML defaults)."""
    declared = declaration_error(components, names)
    if declared:
        return declared
    for consumer, provider, attribute in LINKS:
        needs = frozenset(getattr(components[consumer], attribute))
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
    from hydra.utils import get_class

    return getattr(get_class(_load(group, name)._target_), what, frozenset())


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
