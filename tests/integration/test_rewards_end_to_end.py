"""Reward components beyond the verifier: the remote reward against stub servers on 127.0.0.1,
the mix, and the tiny image reward models."""
import json
import math
import subprocess
import sys

import pytest
import torch
from common import counting_handler, rlzoo_train_here, tiny

from rlzoo.config import compose_config


def test_a_failing_remote_reward_leaves_the_run_as_it_was(server, tmp_path):
    """Garbage from the server (once it answered the run's test request): the run stops with the
    one-line reason in summary.json; the iteration-0 checkpoint and the logs hold nothing from the
    failed iteration."""
    calls = []
    url = server(handler=counting_handler(200, b"garbage", calls, first=b'{"scores": [0.5]}'))
    run_dir = tmp_path / "run"
    result = rlzoo_train_here(
        "task=t2i", "model=sd3_tiny", "reward=remote", f"reward.url={url}",
        "~task.eval_rewards", "+task.eval_rewards={reward:{_target_:rlzoo.rewards.images.CLIPReward,tiny:true}}",
        "debug=tiny", f"task.embedding_cache={tmp_path / 'embeddings'}", f"run_dir={run_dir}")
    assert result.returncode != 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "not JSON" in summary["error"]
    metrics = run_dir / "metrics.jsonl"
    assert summary["iterations"] == 0 and (not metrics.exists() or metrics.read_text() == "")
    assert (run_dir / "checkpoints").exists()  # the iteration-0 checkpoint, written before the failure
    assert calls == [1, 1]  # the test request, then the failing one (not retried: garbage is not transient)


class CountingLearner:
    """A made-up learner beside the policy: counts its updates (its one number of state) and
    claims 10 forward and 1 backward model evaluations per rollout row."""

    name = "counter"

    def __init__(self):
        self.updates = 0

    def attach(self, policy):
        self.attached = policy

    def update(self, rollout, draws, shard):
        from rlzoo.types import Cost

        self.updates += 1
        return Cost(10 * len(rollout.x0), len(rollout.x0))

    def metrics(self):
        return {"updates": float(self.updates)}

    def state_dict(self):
        return {"updates": torch.tensor(self.updates)}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])


def test_a_learner_is_updated_counted_logged_and_resumed(tmp_path):
    """The trainer's one hook for what learns beside the policy (DMD's critic is one): update
    once per iteration, its cost counted, its metrics logged under its name, its state
    checkpointed and restored on resume."""
    from rlzoo.config import build_components
    from rlzoo.runs import load_checkpoint
    from rlzoo.trainer import Trainer

    def fit(run_dir, *overrides, learner=None):
        cfg = compose_config(tiny(*overrides))
        components = build_components(cfg)
        if learner is not None:
            components.learners.append(learner)
        return Trainer(cfg, run_dir, components).fit()

    plain, learner = fit(tmp_path / "plain"), CountingLearner()
    counted = fit(tmp_path / "counted", learner=learner)
    assert counted["compute"]["nfe_forward"] - plain["compute"]["nfe_forward"] == 2 * 10 * 8  # 2 iterations x 8 rows
    assert counted["compute"]["nfe_backward"] - plain["compute"]["nfe_backward"] == 2 * 8
    metrics = [json.loads(line) for line in (tmp_path / "counted" / "metrics.jsonl").read_text().splitlines()]
    assert [m["counter/updates"] for m in metrics] == [1.0, 2.0]
    assert int(load_checkpoint(tmp_path / "counted" / "checkpoints" / "last.pt")["learners"]["counter"]["updates"]) == 2
    resumed = CountingLearner()
    fit(tmp_path / "counted", "train.iterations=3", learner=resumed)
    assert resumed.updates == 3  # resumed from 2, not restarted from 0


@pytest.mark.slow  # (README runs the same command in make test: tests/integration/test_readme.py; this also reads the logs)
def test_shapes_trains_on_an_image_reward_and_evaluates_it(tmp_path):
    """shapes renders images, so a learnt image reward (the tiny PickScore here) trains on it — a
    CPU playground for image rewards; `task.eval_rewards` adds the training reward to the held-out
    evaluation beside the verifier."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "rlzoo.commands.train", "task=shapes", "reward=pickscore", "reward.tiny=true", "debug=tiny",
         "+task.eval_rewards.training=${reward}", f"run_dir={run_dir}", "threads=1"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["reward/reward"])) for m in metrics)
    # the verifier's accuracy and the PickScore of the same held-out samples
    assert all({"reward", "strict", "training"} <= set(e) for e in evals)
    assert all(math.isfinite(e["training"]) and e["training"] != 0 for e in evals)
