"""What the config tree resolves to: every recipe and row on every task against a committed
snapshot (a refactor of conf/ must not change what runs), and every shipped component against its
family's Protocol (rlzoo.types)."""
import json
import sys

from common import REPO

from rlzoo.config import build, compose_config

sys.path.insert(0, str(REPO / "scripts"))
from resolved_configs import SNAPSHOT, resolved  # noqa: E402


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


FAMILIES = {"sampler": "SamplerProtocol", "estimator": "EstimatorProtocol", "objective": "ObjectiveProtocol",
            "advantage": "AdvantageProtocol", "kl": "KLProtocol", "reward": "RewardProtocol"}


def test_every_shipped_component_provides_its_familys_interface(cfg_tiny):
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
    critic = build(cfg_tiny.critic)
    assert isinstance(critic, types.LearnerProtocol) and missing == []
