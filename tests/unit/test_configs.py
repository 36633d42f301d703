"""The task's scale numbers mean the same on every task, the config tree's search path, and the
declared fields of the interfaces (the resolved-config snapshot: test_configs_end_to_end.py)."""

import pytest

from rlzoo.config import build, compose_config


@pytest.mark.parametrize("task", ["toy2d", "shapes"])
@pytest.mark.parametrize("kl, c", [("none", 1.0), ("velocity", 0.1), ("sde_mean", 0.1)])
def test_the_exact_advantage_means_the_same_on_every_task(task, kl, c):
    """c = kl.beta / alpha is 0.1 on both tasks with a KL (each sizes beta and alpha together),
    and 1 without one (it used to be the task's beta / alpha: 0.1 on shapes, 1 on toy2d)."""
    advantage = build(compose_config([f"task={task}", f"kl={kl}", "advantage=exact"]).advantage)
    assert advantage.c == pytest.approx(c)


def test_a_search_path_that_is_not_a_directory_is_one_line(tmp_path):
    """(README's example of a reward of your own, through hydra.searchpath, runs in tests/integration/test_readme.py)"""
    from rlzoo.config import ConfigError

    with pytest.raises(ConfigError, match=r"hydra.searchpath entry 'elsewhere' is not a directory"):
        compose_config(["task=shapes", "hydra.searchpath=[elsewhere]"])
    (tmp_path / "reward").mkdir()
    (tmp_path / "reward" / "mine.yaml").write_text("_target_: rlzoo.rewards.VerifierReward\n")
    assert compose_config(["task=shapes", f"hydra.searchpath=[{tmp_path}]", "reward=mine"]).reward._target_ \
        == "rlzoo.rewards.VerifierReward"


def test_a_field_a_provider_declares_but_left_empty_is_named():
    """Consumers read declared fields through `needed`: a provider that breaks its `provides`
    fails there with the field's name, not with a None deep in a formula."""
    import pytest
    import torch

    from rlzoo.types import LikelihoodTerm

    term = LikelihoodTerm(torch.arange(2), torch.zeros(2), torch.zeros(2), 1.0, 0, 0, velocity=torch.ones(2))
    (velocity,) = term.needed("velocity")
    assert torch.equal(velocity, torch.ones(2))
    with pytest.raises(RuntimeError, match="LikelihoodTerm has no x0, t, which its provider declares"):
        term.needed("velocity", "x0", "t")
