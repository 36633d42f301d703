"""Several updates per rollout (inner_epochs, minibatches), model-evaluation budgets, and the
recipes in conf/experiment/ running on both built-in tasks."""
import math

import common
import pytest
import torch

from rlzoo.config import available
from rlzoo.distributed import minibatch_rows
from rlzoo.types import Conditioning, Rollout

# the tiny config with 4 prompt groups and 4-step rollouts (minibatches of whole groups), no evaluation but the first
TINY_TOY = common.tiny("train.batch_size=16", "sampler.num_steps=4", "eval.samples=16", "eval.batch_size=16",
                       "eval.every=100")
TINY_SHAPES = common.tiny("sampler.num_steps=4", "eval.every=100", task="shapes")


def trainer(tmp_path, overrides):
    return common.trainer(tmp_path, *overrides)


def test_minibatch_rows_split_whole_groups():
    rows = minibatch_rows(24, 4, 3, torch.Generator().manual_seed(0))
    assert len(rows) == 3 and all(len(r) == 8 for r in rows)
    assert sorted(torch.cat(rows).tolist()) == list(range(24))
    for r in rows:  # each minibatch holds two whole groups of 4 consecutive rows
        groups, counts = torch.unique(r // 4, return_counts=True)
        assert len(groups) == 2 and counts.tolist() == [4, 4]
    assert minibatch_rows(24, 4, 1, None)[0].tolist() == list(range(24))


def test_rollout_select_keeps_rows_aligned():
    cond = Conditioning([f"p{i}" for i in range(5)], {"ids": torch.arange(5)[:, None]},
                        torch.arange(5), torch.arange(5) // 2)
    rollout = Rollout(x0=torch.arange(5.0)[:, None], cond=cond, sigmas=torch.tensor([1.0, 0.0]), nfe=1,
                      trajectory=torch.arange(5.0)[:, None, None].expand(5, 2, 1),
                      log_probs=torch.arange(5.0)[:, None])
    part = rollout.select(torch.tensor([3, 1]))
    assert part.x0.flatten().tolist() == [3.0, 1.0] and part.cond.prompts == ["p3", "p1"]
    assert part.cond.inputs["ids"].flatten().tolist() == [3, 1]
    assert part.trajectory[:, 0, 0].tolist() == [3.0, 1.0] and part.log_probs.flatten().tolist() == [3.0, 1.0]
    assert torch.equal(part.sigmas, rollout.sigmas) and part.nfe == 1


@pytest.mark.parametrize("estimator,sampler", [("elbo", "dpm2"), ("trajectory", "flow_sde")])
def test_inner_epochs_start_at_ratio_one_then_move(tmp_path, estimator, sampler):
    """Old policy = the policy that sampled (schedule 0): the first update's ratio is 1, later
    updates on the same rollout see real importance weights; 3 optimizer steps per iteration."""
    # 10 steps: DPM-Solver++(2M) at 4 steps of the peers' schedule draws nothing near toy2d's
    # targets (all rewards 0, no gradient); at 10 it matches Euler
    overrides = [o for o in TINY_TOY if not o.startswith("sampler.num_steps")] + ["sampler.num_steps=10"]
    t = trainer(tmp_path, [*overrides, f"estimator={estimator}", f"sampler={sampler}",
                           "kl=none", "train.old_policy_schedule=0", "train.inner_epochs=3",
                           "optimizer.lr=0.05", "train.iterations=1"])
    seen = []
    update = t.update
    t.update = lambda batch, shard: seen.append(update(batch, shard)) or seen[-1]
    record = t.train_step()
    assert record["updates"] == 3 and len(seen) == 3
    assert seen[0]["log_ratio_abs_max"] < 1e-5
    assert seen[1]["log_ratio_abs_max"] > 1e-4 and seen[2]["log_ratio_abs_max"] > 1e-4
    assert record["log_ratio_abs_max"] == max(s["log_ratio_abs_max"] for s in seen)
    assert t.optimizer.state_dict()["state"][0]["step"] == 3
    # after the iteration the old policy is the current one again (schedule 0)
    for old, cur in zip(t.policy.old.parameters(), t.policy.current.parameters()):
        assert torch.equal(old, cur)


def test_minibatches_each_see_a_share_of_the_batch(tmp_path):
    t = trainer(tmp_path, [*TINY_TOY, "train.minibatches=2", "train.iterations=1"])
    sizes = []
    update = t.update
    t.update = lambda batch, shard: sizes.append(len(batch.advantage)) or update(batch, shard)
    record = t.train_step()
    assert sizes == [8, 8] and record["updates"] == 2


def test_model_evaluation_budget_stops_training(tmp_path):
    t = trainer(tmp_path, [*TINY_TOY, "train.iterations=50", "train.max_nfe=2000"])
    summary = t.fit()
    spent = summary["compute"]["nfe_forward"] + summary["compute"]["nfe_backward"]
    # every iteration costs the same: the run stops at the first iteration that reaches 2000
    per_iteration = spent / summary["iterations"]
    assert spent >= 2000 and spent - per_iteration < 2000 and summary["iterations"] < 50


def test_evaluations_at_fixed_compute(tmp_path):
    """eval.every_nfe: an evaluation each time the compute crosses a multiple of it, none twice at
    the end of the run, and the same after a resume."""
    from rlzoo.runs import read_jsonl

    overrides = [*TINY_TOY, "train.iterations=100", "train.max_nfe=6000", "eval.every_nfe=1000",
                 "checkpoint_every=3"]
    summary = trainer(tmp_path / "a", overrides).fit()
    evals = read_jsonl(tmp_path / "a" / "eval.jsonl")
    nfe = [r["nfe_forward"] + r["nfe_backward"] for r in evals]
    assert nfe[0] == 0 and nfe[-1] == summary["compute"]["nfe_forward"] + summary["compute"]["nfe_backward"]
    assert [n // 1000 for n in nfe[1:-1]] == list(range(1, 6))  # one per crossed multiple
    assert len({r["iteration"] for r in evals}) == len(evals)
    first = trainer(tmp_path / "b", [*overrides[:-3], "train.iterations=4", "train.max_nfe=6000",
                                     "eval.every_nfe=1000", "checkpoint_every=3"])
    first.fit()
    resumed = trainer(tmp_path / "b", overrides)
    resumed.fit()
    assert [r["nfe_forward"] for r in read_jsonl(tmp_path / "b" / "eval.jsonl")][-3:] == \
        [r["nfe_forward"] for r in evals][-3:]


RECIPES = available("experiment")


def test_every_paper_recipe_is_installed():
    assert {"paper_a", "flowgrpo", "flowgrpo_fast", "diffusionnft", "awm"} <= set(RECIPES)


@pytest.mark.parametrize("task", ["toy2d", "shapes"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs(tmp_path, recipe, task):
    fit_window = ["sampler.window_range=[0,2]"] if recipe == "flowgrpo_fast" else []  # 4 steps, not 10
    t = trainer(tmp_path, [f"experiment={recipe}", *(TINY_TOY if task == "toy2d" else TINY_SHAPES),
                           "train.iterations=2", *fit_window])
    assert t.cfg.name == recipe
    summary = t.fit()
    assert summary["status"] == "completed" and summary["iterations"] == 2
    assert math.isfinite(summary["final"]["reward"]) and summary["compute"]["nfe_backward"] > 0


def test_summary_records_compute_at_the_threshold(tmp_path):
    t = trainer(tmp_path / "a", [*TINY_TOY, "train.iterations=4", "eval.every=2", "report.threshold=-1"])
    summary = t.fit()
    assert summary["threshold"] == -1 and summary["threshold_reached"]["iteration"] == 0
    assert summary["threshold_reached"]["nfe_forward"] == 0
    t = trainer(tmp_path / "b", [*TINY_TOY, "train.iterations=4", "eval.every=2", "report.threshold=2"])
    assert t.fit()["threshold_reached"] is None


def test_ema_schedules_count_optimizer_steps(tmp_path):
    """The peers' EMAs count optimizer steps (global_step), not iterations: with 2 minibatches the
    evaluation EMA moves after each of the 2 steps (decay of step 1, then of step 2) and the
    behaviour policy once after the rollout, with the decay of step 2."""
    from rlzoo.old_policy import eval_ema_decay, old_policy_decay

    t = trainer(tmp_path, [*TINY_TOY, "train.minibatches=2", "train.old_policy_schedule=1",
                           "optimizer.lr=0.05", "train.iterations=1"])

    def weights(module):
        return torch.cat([p.detach().flatten().clone() for p in module.parameters()])

    old0, eval0 = weights(t.policy.old), weights(t.policy.ema)
    after_each = []
    update = t.update

    def recording_update(rollout, advantage, *rest):
        stats = update(rollout, advantage, *rest)
        after_each.append(weights(t.policy.current))
        return stats

    t.update = recording_update
    t.train_step()
    assert t.progress.optimizer_steps == 2 and len(after_each) == 2
    d1, d2 = eval_ema_decay(1, 0.9), eval_ema_decay(2, 0.9)
    expected_eval = d2 * (d1 * eval0 + (1 - d1) * after_each[0]) + (1 - d2) * after_each[1]
    assert torch.allclose(weights(t.policy.ema), expected_eval, atol=1e-6)
    d = old_policy_decay(1, 2)
    assert torch.allclose(weights(t.policy.old), d * old0 + (1 - d) * after_each[1], atol=1e-6)


@pytest.mark.parametrize("need_reference", [False, True])
def test_trajectory_compute_counts_the_reused_log_probs(tmp_path, need_reference):
    """Reusing the recorded old log-probs saves one forward per term and row, and the count says so."""
    kl = ["kl=velocity", "kl.beta=0.01"] if need_reference else ["kl=none"]
    spent = {}
    for recompute in (False, True):
        (tmp_path / str(recompute)).mkdir()
        t = trainer(tmp_path / str(recompute), [*TINY_TOY, "estimator=trajectory", "sampler=flow_sde",
                                                f"estimator.recompute_old={recompute}", *kl,
                                                "train.iterations=1"])
        t.train_step()
        spent[recompute] = t.progress.compute.nfe_forward
    terms = int(4 * 0.99)  # trained steps of the 4-step rollout
    rollout = 16 * 4
    assert spent[False] == rollout + 16 * terms * (1 + need_reference)
    assert spent[True] - spent[False] == 16 * terms
