"""Data parallelism (rlzoo.distributed, rlzoo.rng): keyed random numbers that no split of the batch
changes, the validation of a launch, and torchrun with 2 gloo ranks on the CPU against one process
with the same global batch and seed."""
import os
import subprocess

import pytest
import torch
from common import BIN, ENV, REPO, kill_a_rank_when, records


# ------------------------------------------------------------------------------- torchrun
def launch(run_dir, *overrides, ranks: int = 1, fails: bool = False, timeout: float = 240):
    """`rlzoo.commands.train` in one process, or under torchrun with `ranks` gloo processes; it must succeed
    (or, with `fails`, must not)."""
    if ranks == 1:
        command = [str(BIN / "python"), "-m", "rlzoo.commands.train"]
    else:
        command = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m", "rlzoo.commands.train"]
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run([*command, *overrides, f"run_dir={run_dir}", "progress_bar=false", "threads=1",
                             "dist.timeout_s=60"], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    assert (result.returncode != 0) == fails, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def assert_failed_with_finite_weights(run_dir, *messages):
    """summary.json says failed, naming `messages`, and the checkpoint holds finite weights."""
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and all(m in summary["error"] for m in messages), summary
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["policy"]["current"].values() if v.is_floating_point())


def trainable(run_dir) -> dict:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return {k: v for k, v in state["policy"]["current"].items() if v.is_floating_point()}


COMPARED = ("loss", "kl", "grad_norm", "critic/loss")  # and every reward/... key


def assert_same_run(one, two, rel: float = 1e-5):
    a, b = records(one / "metrics.jsonl"), records(two / "metrics.jsonl")
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == list(range(1, len(a) + 1))
    for x, y in zip(a[:3], b[:3]):
        for key in (k for k in x if k in COMPARED or k.startswith("reward/")):
            # (a loss near 0 is a difference of larger terms, and a group-normalised mix has mean 0: 1e-7 absolute)
            near_zero = key in ("loss", "reward/reward")
            assert y[key] == pytest.approx(x[key], rel=rel, abs=1e-7 if near_zero else 1e-9), (key, x["iteration"])
        assert (x["nfe_forward"], x["nfe_backward"]) == (y["nfe_forward"], y["nfe_backward"])
    # held-out evaluation, sharded over the ranks: the same numbers as one process (exactly, before
    # training; after it, to the weights' float tolerance: flux_tiny's tiny PickScore after 3 LoRA
    # steps was measured 1.03e-4 apart on an AMD EPYC, from weights 1e-6 apart)
    e1, e2 = records(one / "eval.jsonl"), records(two / "eval.jsonl")
    assert [r["iteration"] for r in e1] == [r["iteration"] for r in e2] and e1
    for x, y in zip(e1, e2):
        numbers = [k for k, v in x.items() if isinstance(v, float) and not k.startswith(("time", "wall"))]
        assert numbers and all(y[k] == pytest.approx(x[k], rel=0 if x["iteration"] == 0 else 2e-4, abs=1e-7)
                               for k in numbers), (x, y)
    w1, w2 = trainable(one), trainable(two)
    assert w1.keys() == w2.keys()
    # float32 weights: 1e-6 absolute plus 1e-5 relative (shapes' 3 Adam steps move a weight of -0.19 by 1.3e-6)
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-5, atol=1e-6) for k in w1)


@pytest.mark.parametrize("name,overrides", [
    # (evaluation batches smaller than the evaluation set, so that it is shared out: 3 batches, 2 ranks)
    pytest.param("toy2d_elbo", ["task=toy2d", "experiment=paper_a", "train.iterations=3", "eval.every=2",
                                "eval.samples=64", "eval.batch_size=24"], marks=pytest.mark.slow),  # (shapes: make test)
    # FlowGRPO: trajectory estimator, SDE window, 2 minibatches; 3 groups on 2 ranks (an uneven split)
    ("toy2d_uneven_minibatches", ["task=toy2d", "experiment=flowgrpo", "train.iterations=3", "eval.every=3",
                                  "eval.samples=64", "train.batch_size=48", "train.group_size=16",
                                  "train.minibatches=3"]),
    # shapes with enough held-out samples for FID and KID (torchmetrics must not gather them a second time)
    ("shapes", ["task=shapes", "debug=tiny", "train.iterations=2", "eval.samples=48", "eval.batch_size=16"]),
    # the rest in make test-all (make test keeps a handful of multi-rank runs within its 10 minutes)
    # SD3 classes with LoRA and the tiny PickScore; rank 0 fills the text-embedding cache, the other reads it
    pytest.param("t2i_lora", ["task=t2i", "model=sd3_tiny", "reward=pickscore", "reward.tiny=true", "debug=tiny",
                              "train.iterations=3", "eval.batch_size=4"], marks=pytest.mark.slow),
    # FLUX.1's classes (packed latents, the guidance embedding, its dynamic shift) with LoRA, as t2i_lora
    pytest.param("flux_lora", ["task=t2i", "model=flux_tiny", "reward=pickscore", "reward.tiny=true", "debug=tiny",
                               "train.iterations=3", "eval.batch_size=4"], marks=pytest.mark.slow),
    # Z-Image's classes (each prompt's own tokens, the reversed time axis) with LoRA
    pytest.param("z_image_lora", ["task=t2i", "model=z_image_tiny", "reward=pickscore", "reward.tiny=true",
                                  "debug=tiny", "train.iterations=3", "eval.batch_size=4"], marks=pytest.mark.slow),
    # DMD: the critic learns beside the policy (its gradients summed over ranks too)
    pytest.param("toy2d_dmd_critic", ["task=toy2d", "experiment=dmd", "train.iterations=3", "eval.every=3",
                                      "eval.samples=64"], marks=pytest.mark.slow),
    # GNDMR: R_dm (its (ε, t) keyed per row) mixed with the verifier, the critic learning beside the policy
    pytest.param("toy2d_gndmr", ["task=toy2d", "experiment=gndmr", "train.iterations=3", "eval.every=3",
                                 "eval.samples=64", "eval.batch_size=24"], marks=pytest.mark.slow),
])
def test_two_ranks_train_as_one_process(tmp_path, name, overrides):
    """torchrun --nproc_per_node 2 against one process, same global batch and seed, train.rng=keyed:
    per-iteration reward, loss, KL and gradient norm to rtol 1e-5, the trained weights to 1e-6, the
    same files in the run directory and one metrics line per iteration."""
    cache = (lambda name: [f"task.embedding_cache={tmp_path / name}"]) if "task=t2i" in overrides else (lambda name: [])
    launch(tmp_path / "one", *overrides, "train.rng=keyed", *cache("one_cache"))
    launch(tmp_path / "two", *overrides, "train.rng=keyed", *cache("two_cache"), ranks=2)
    # Z-Image's transformer pads the captions of a batch to the batch's longest: 4 rows a rank and 8 in
    # one process pad differently, so its sums round differently (measured: grad norms 1.2e-5 apart,
    # the trained weights 6.4e-7, within the 1e-6 below)
    assert_same_run(tmp_path / "one", tmp_path / "two", rel=1e-4 if name == "z_image_lora" else 1e-5)
    if name == "shapes":  # every number an evaluation reports, the set metrics included
        assert {"fid_data", "kid_data"} <= set(records(tmp_path / "two" / "eval.jsonl")[-1])
    listing = [sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
               for d in (tmp_path / "one", tmp_path / "two")]
    assert listing[0] == listing[1]


@pytest.mark.slow
def test_a_run_started_on_two_ranks_resumes_on_one(tmp_path):
    """The checkpoint holds no trace of the world size: 2 iterations on 2 ranks, then 2 more in one
    process, end where 4 iterations in one process end."""
    common = ["task=toy2d", "experiment=paper_a", "train.rng=keyed", "eval.every=2", "eval.samples=64"]
    launch(tmp_path / "split", *common, "train.iterations=2", ranks=2)
    launch(tmp_path / "split", *common, "train.iterations=4")
    launch(tmp_path / "one", *common, "train.iterations=4")
    assert_same_run(tmp_path / "one", tmp_path / "split")


def test_rank_zero_alone_owns_the_run_directory(tmp_path):
    """A second launch into a running run's directory is refused by rank 0's lock, and a stream
    run under torchrun is refused in one line before any model."""
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    result = subprocess.run([str(BIN / "python"), "-m", "rlzoo.commands.train", "task=toy2d", f"run_dir={tmp_path / 'r'}"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2 and "train.rng=keyed" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert os.environ.get("WORLD_SIZE") in (None, "1")


def test_a_reward_failing_on_one_rank_stops_both(tmp_path):
    """A reward that raises on rank 1 only: both ranks stop (no wait until the collective timeout),
    torchrun fails, and summary.json says failed with rank 1's error; the checkpoint is finite."""
    launch(tmp_path / "run", "task=toy2d", "train.rng=keyed", "train.iterations=4", "eval.every=4", "eval.samples=64",
           "reward._target_=faulty_rewards.CrashingReward", "+reward.at=2", "+reward.rank=1",
           ranks=2, fails=True, timeout=120)
    assert_failed_with_finite_weights(tmp_path / "run", "rank 1 failed", "deliberate crash")


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both(tmp_path):
    """NaN rewards on rank 1's rows only: every rank stops with a non-finite loss (agreed before the
    gradient all-reduce, so none waits), summary.json says failed, the checkpoint stays finite."""
    launch(tmp_path / "run", "task=toy2d", "train.rng=keyed", "train.iterations=3", "eval.every=3", "eval.samples=64",
           "reward._target_=faulty_rewards.NaNReward", "+reward.rank=1", ranks=2, fails=True, timeout=120)
    assert_failed_with_finite_weights(tmp_path / "run", "non-finite loss")


@pytest.mark.slow  # (make test: tests/faults/test_ranks.py kills a rank and resumes)
@pytest.mark.parametrize("restarts", [0, 1])
def test_a_killed_rank_ends_the_run_and_it_resumes(tmp_path, restarts):
    """SIGKILL one rank after 3 of 6 iterations (a checkpoint every iteration). Without restarts
    torchrun exits non-zero within seconds and rerunning the same command resumes and completes;
    with --max_restarts 1 torchrun restarts both ranks, which resume. Either way the run ends
    equal to an uninterrupted one, with one metrics line per iteration."""
    import time

    args = ["task=toy2d", "experiment=paper_a", "train.rng=keyed", "train.iterations=6", "eval.every=3",
            "eval.samples=64", "checkpoint_every=1", "progress_bar=false", "threads=1", "dist.timeout_s=60"]
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", f"--max_restarts={restarts}",
               "-m", "rlzoo.commands.train", *args, f"run_dir={tmp_path / 'killed'}"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_a_rank_when(tmp_path / "killed", 3, process)
    killed_at = time.monotonic()
    _, err = process.communicate(timeout=180)
    if restarts == 0:
        assert process.returncode != 0 and time.monotonic() - killed_at < 30, err[-2000:]
        rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    else:
        assert process.returncode == 0, err[-3000:]
    launch(tmp_path / "whole", *args[:-3], ranks=2)
    killed, whole = records(tmp_path / "killed" / "metrics.jsonl"), records(tmp_path / "whole" / "metrics.jsonl")
    assert [r["iteration"] for r in killed] == list(range(1, 7))
    assert [r["loss"] for r in killed] == [r["loss"] for r in whole]
    w1, w2 = trainable(tmp_path / "killed"), trainable(tmp_path / "whole")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


@pytest.mark.slow
def test_submitit_local_two_tasks_train_as_one_process(tmp_path):
    """hydra/launcher=local_2rank: a job's two submitit tasks are two gloo ranks (rank from
    submitit's job environment), and the run equals one process."""
    args = ["task=toy2d", "experiment=paper_a", "train.rng=keyed", "train.iterations=3", "eval.every=2",
            "eval.samples=64"]
    launch(tmp_path / "one", *args)
    result = subprocess.run([str(BIN / "rlzoo-train"), "-m", *args, "progress_bar=false", "threads=1",
                             "dist.timeout_s=60", "hydra/launcher=local_2rank", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_0_log.out"))
    assert "data parallel over 2 ranks (gloo)" in logs
    assert_same_run(tmp_path / "one", run_dir)


@pytest.mark.slow
def test_a_timed_out_job_is_requeued_and_resumes(tmp_path):
    """submitit's local executor with a 1-minute limit sends SIGUSR2 after 30 s; rank 0 requeues,
    both tasks restart and resume from the time-based checkpoint; the run ends completed with
    strictly increasing iterations (about a minute and a half). The run must outlast the 30 s:
    300 iterations once did, and finished in 21 s on a faster machine."""
    result = subprocess.run([str(BIN / "rlzoo-train"), "-m", "task=toy2d", "experiment=paper_a", "train.rng=keyed",
                             "train.iterations=1000", "eval.every=250", "eval.samples=64", "checkpoint_every=1000",
                             "checkpoint_every_minutes=0.1", "progress_bar=false", "threads=1", "dist.timeout_s=60",
                             "hydra/launcher=local_2rank", "hydra.launcher.timeout_min=1",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_0_log.out"))
    assert "Requeued job" in logs and "resuming" in logs
    assert __import__("json").loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert [r["iteration"] for r in records(run_dir / "metrics.jsonl")] == list(range(1, 1001))
