"""What the config tree resolves to: every recipe and row on every task against a committed
snapshot (a refactor of conf/ must not change what runs), and the task's scale numbers meaning
the same on every task."""
import json
import sys

import pytest
from common import REPO

from rlzoo.config import build, compose_config

sys.path.insert(0, str(REPO / "scripts"))
from resolved_configs import SNAPSHOT, resolved  # noqa: E402


@pytest.mark.integration  # (composes some 60 configs: ~10 s, kept out of make test-fast)
def test_every_recipe_resolves_as_the_snapshot_says():
    """A difference means conf/ now runs something else: if it is meant, rerun
    `python scripts/resolved_configs.py` and review the snapshot's diff."""
    committed = json.loads(SNAPSHOT.read_text())
    now = resolved()
    assert sorted(now) == sorted(committed)
    differences = [f"{label}: {key} {committed[label].get(key)!r} -> {now[label].get(key)!r}"
                   for label in now for key in sorted(set(now[label]) | set(committed[label]))
                   if now[label].get(key) != committed[label].get(key)]
    assert not differences, "\n".join(differences[:20])


@pytest.mark.parametrize("task", ["toy2d", "shapes"])
@pytest.mark.parametrize("kl, c", [("none", 1.0), ("velocity", 0.1), ("sde_mean", 0.1)])
def test_the_exact_advantage_means_the_same_on_every_task(task, kl, c):
    """c = kl.beta / alpha is 0.1 on both tasks with a KL (each sizes beta and alpha together),
    and 1 without one (it used to be the task's beta / alpha: 0.1 on shapes, 1 on toy2d)."""
    advantage = build(compose_config([f"task={task}", f"kl={kl}", "advantage=exact"]).advantage)
    assert advantage.c == pytest.approx(c)


FAMILIES = {"sampler": "SamplerProtocol", "estimator": "EstimatorProtocol", "objective": "ObjectiveProtocol",
            "advantage": "AdvantageProtocol", "kl": "KLProtocol", "reward": "RewardProtocol"}


@pytest.mark.integration  # (builds every shipped component: ~10 s)
def test_every_shipped_component_provides_its_familys_interface():
    """rlzoo.types holds one Protocol per component family, the members the trainer relies on;
    every choice of every group provides them (so does the critic, the one shipped learner)."""
    import rlzoo.types as types
    from rlzoo.config import available

    missing = []
    for group, protocol in FAMILIES.items():
        for choice in available(group):
            extra = ["task=t2i", "model=sd3_tiny", "reward.url=http://127.0.0.1:1/"] if choice == "remote" else \
                ["task=t2i", "model=sd3_tiny"] if group == "reward" else ["task=toy2d"]
            component = build(compose_config([*extra, f"{group}={choice}"])[group])
            if not isinstance(component, getattr(types, protocol)):
                missing.append(f"{group}={choice}")
    for task in ("toy2d", "shapes", "t2i"):
        cfg = compose_config([f"task={task}", *(["model=sd3_tiny"] if task == "t2i" else [])])
        if not isinstance(build(cfg.task), types.TaskProtocol):
            missing.append(f"task={task}")
    critic = build(compose_config(["task=toy2d"]).critic)
    assert isinstance(critic, types.LearnerProtocol) and missing == []


def test_a_search_path_that_is_not_a_directory_is_one_line(tmp_path):
    """(README's example of a reward of your own, through hydra.searchpath, runs in tests/test_readme.py)"""
    from rlzoo.config import ConfigError

    with pytest.raises(ConfigError, match=r"hydra.searchpath entry 'elsewhere' is not a directory"):
        compose_config(["task=shapes", "hydra.searchpath=[elsewhere]"])
    (tmp_path / "reward").mkdir()
    (tmp_path / "reward" / "mine.yaml").write_text("_target_: rlzoo.rewards.VerifierReward\n")
    assert compose_config(["task=shapes", f"hydra.searchpath=[{tmp_path}]", "reward=mine"]).reward._target_ \
        == "rlzoo.rewards.VerifierReward"
