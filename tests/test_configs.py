"""What the config tree resolves to: every recipe and row on every task against a committed
snapshot (a refactor of conf/ must not change what runs), and the task's scale numbers meaning
the same on every task."""
import json
import subprocess
import sys

import pytest
from common import BIN, ENV, REPO

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


def readme_block(first_line: str) -> str:
    """The README code block whose first line is `first_line`."""
    import re

    text = (REPO / "README.md").read_text()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        if block.splitlines()[0] == first_line:
            return block
    raise AssertionError(f"README has no code block starting {first_line!r}")


@pytest.mark.integration
def test_a_users_own_reward_trains_through_the_search_path(tmp_path):
    """README's example as written: a reward class and its YAML outside the package, found through
    hydra.searchpath, train on shapes; a missing directory is one line."""
    import shlex

    (tmp_path / "my_rewards.py").write_text(readme_block("# my_rewards.py"))
    (tmp_path / "my_conf" / "reward").mkdir(parents=True)
    (tmp_path / "my_conf" / "reward" / "brightness.yaml").write_text(readme_block("# my_conf/reward/brightness.yaml"))
    line = next(line for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith(".venv/bin/rlzoo-train") and "reward=brightness debug=tiny" in line)
    argv = shlex.split(line)
    argv[0] = str(BIN / "rlzoo-train")
    out = subprocess.run([*argv, "threads=1"], capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = [json.loads(x) for x in (tmp_path / "runs/debug/shapes/epg-elbo-dpm2/seed0/metrics.jsonl").read_text().splitlines()]
    assert all(-1 <= m["reward/reward"] <= 1 and m["reward/reward"] not in (0.0, 1.0) for m in metrics)  # brightness, not 0/1
    missing = subprocess.run([*argv[:2], "hydra.searchpath=[elsewhere]", *argv[3:]], capture_output=True, text=True,
                             cwd=tmp_path, env=ENV, timeout=300)
    assert missing.returncode == 2 and "hydra.searchpath entry 'elsewhere' is not a directory" in missing.stderr
