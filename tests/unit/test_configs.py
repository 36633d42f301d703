"""What the config tree resolves to: every recipe and row on every task against a committed
snapshot (a refactor of conf/ must not change what runs), and the task's scale numbers meaning
the same on every task."""

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
