"""Data parallelism (rlzoo.distributed, rlzoo.rng): keyed random numbers that no split of the batch
changes, the validation of a launch, and torchrun with 2 gloo ranks on the CPU against one process
with the same global batch and seed."""
import os
import subprocess

import pytest
import torch
from common import BIN, ENV, REPO, records

from rlzoo.config import ConfigError, compose_config, validate
from rlzoo.distributed import group_split
from rlzoo.rng import KeyedDraws, StreamDraws, key_seed


# ------------------------------------------------------------------------------- keyed draws
def test_keyed_draws_do_not_depend_on_how_the_rows_are_cut():
    """A row gets the same numbers drawn with the whole batch, in micro-batches, on another
    "rank" (a different first row) or after other rows; successive draws continue its stream."""
    rows = torch.arange(40)
    whole = KeyedDraws(7, 3, "update", rows)
    first, second = whole.randn((40, 3, 5)), whole.rand((40, 2))
    pieces = KeyedDraws(7, 3, "update", rows)
    chunks = [pieces.select(torch.arange(s, min(s + 16, 40))) for s in range(0, 40, 16)]
    assert torch.equal(torch.cat([c.randn((len(c.rows), 3, 5)) for c in chunks]), first)
    assert torch.equal(torch.cat([c.rand((len(c.rows), 2)) for c in chunks]), second)
    other_rank = KeyedDraws(7, 3, "update", rows[24:])
    assert torch.equal(other_rank.randn((16, 3, 5)), first[24:])
    assert not torch.equal(KeyedDraws(7, 4, "update", rows).randn((40, 3, 5)), first)  # the iteration is a key
    assert not torch.equal(KeyedDraws(7, 3, "rollout", rows).randn((40, 3, 5)), first)  # so is the purpose


def test_keyed_shared_draws_are_the_same_for_every_rank():
    a, b = KeyedDraws(0, 5, "minibatch", torch.arange(0, 8)), KeyedDraws(0, 5, "minibatch", torch.arange(8, 16))
    assert torch.equal(torch.randperm(12, generator=a.shared), torch.randperm(12, generator=b.shared))


def test_stream_draws_are_the_generator_in_order():
    generator, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draws = StreamDraws(generator)
    out = [draws.randn((4, 2)), draws.select(torch.tensor([1, 2])).rand((4,)), torch.randint(5, (2,), generator=draws.shared)]
    expected = [torch.randn(4, 2, generator=reference), torch.rand(4, generator=reference),
                torch.randint(5, (2,), generator=reference)]
    assert all(torch.equal(a, b) for a, b in zip(out, expected))


def test_key_seed_is_stable():
    """The seed of a key is a pure function of its parts (not Python's salted hash)."""
    assert key_seed(0, 1, "rollout", 2) == key_seed(0, 1, "rollout", 2) != key_seed(0, 1, "rollout", 3)
    assert key_seed(0, 1, "rollout", 2) == 86185433096748374


@pytest.mark.parametrize("groups,world", [(8, 2), (3, 2), (5, 3), (4, 4), (7, 1)])
def test_every_group_goes_to_exactly_one_rank(groups, world):
    shares = [list(share) for share in group_split(groups, world)]
    assert sum(shares, []) == list(range(groups)) and all(shares)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


# ------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("overrides,message", [
    (["train.rng=stream"], "train.rng=keyed"),
    (["train.rng=keyed", "train.batch_size=8", "train.group_size=8"], "train.batch_size>=16"),
    (["train.rng=keyed", "experiment=gndmr", "reward.normalize=batch"], "reward.normalize=group"),
    (["train.rng=shuffled"], "valid: stream, keyed"),
])
def test_a_launch_is_validated_before_any_model(monkeypatch, overrides, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = compose_config(["task=toy2d", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


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


def assert_same_run(one, two):
    a, b = records(one / "metrics.jsonl"), records(two / "metrics.jsonl")
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == list(range(1, len(a) + 1))
    for x, y in zip(a[:3], b[:3]):
        for key in (k for k in x if k in COMPARED or k.startswith("reward/")):
            # (a loss near 0 is a difference of larger terms, and a group-normalised mix has mean 0: 1e-7 absolute)
            near_zero = key in ("loss", "reward/reward")
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7 if near_zero else 1e-9), (key, x["iteration"])
        assert (x["nfe_forward"], x["nfe_backward"]) == (y["nfe_forward"], y["nfe_backward"])
    # held-out evaluation, sharded over the ranks: the same numbers as one process (exactly, before
    # training; after it, to the weights' float tolerance)
    e1, e2 = records(one / "eval.jsonl"), records(two / "eval.jsonl")
    assert [r["iteration"] for r in e1] == [r["iteration"] for r in e2] and e1
    for x, y in zip(e1, e2):
        numbers = [k for k, v in x.items() if isinstance(v, float) and not k.startswith(("time", "wall"))]
        assert numbers and all(y[k] == pytest.approx(x[k], rel=0 if x["iteration"] == 0 else 1e-4, abs=1e-7)
                               for k in numbers), (x, y)
    w1, w2 = trainable(one), trainable(two)
    assert w1.keys() == w2.keys()
    # float32 weights: 1e-6 absolute plus 1e-5 relative (shapes' 3 Adam steps move a weight of -0.19 by 1.3e-6)
    assert all(torch.allclose(w1[k], w2[k], rtol=1e-5, atol=1e-6) for k in w1)


@pytest.mark.integration
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
    assert_same_run(tmp_path / "one", tmp_path / "two")
    if name == "shapes":  # every number an evaluation reports, the set metrics included
        assert {"fid_data", "kid_data"} <= set(records(tmp_path / "two" / "eval.jsonl")[-1])
    listing = [sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
               for d in (tmp_path / "one", tmp_path / "two")]
    assert listing[0] == listing[1]


@pytest.mark.slow
@pytest.mark.integration
def test_a_run_started_on_two_ranks_resumes_on_one(tmp_path):
    """The checkpoint holds no trace of the world size: 2 iterations on 2 ranks, then 2 more in one
    process, end where 4 iterations in one process end."""
    common = ["task=toy2d", "experiment=paper_a", "train.rng=keyed", "eval.every=2", "eval.samples=64"]
    launch(tmp_path / "split", *common, "train.iterations=2", ranks=2)
    launch(tmp_path / "split", *common, "train.iterations=4")
    launch(tmp_path / "one", *common, "train.iterations=4")
    assert_same_run(tmp_path / "one", tmp_path / "split")


@pytest.mark.integration
def test_rank_zero_alone_owns_the_run_directory(tmp_path):
    """A second launch into a running run's directory is refused by rank 0's lock, and a stream
    run under torchrun is refused in one line before any model."""
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    result = subprocess.run([str(BIN / "python"), "-m", "rlzoo.commands.train", "task=toy2d", f"run_dir={tmp_path / 'r'}"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2 and "train.rng=keyed" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert os.environ.get("WORLD_SIZE") in (None, "1")


@pytest.mark.integration
def test_a_reward_failing_on_one_rank_stops_both(tmp_path):
    """A reward that raises on rank 1 only: both ranks stop (no wait until the collective timeout),
    torchrun fails, and summary.json says failed with rank 1's error; the checkpoint is finite."""
    launch(tmp_path / "run", "task=toy2d", "train.rng=keyed", "train.iterations=4", "eval.every=4", "eval.samples=64",
           "reward._target_=faulty_rewards.CrashingReward", "+reward.at=2", "+reward.rank=1",
           ranks=2, fails=True, timeout=120)
    assert_failed_with_finite_weights(tmp_path / "run", "rank 1 failed", "deliberate crash")


@pytest.mark.slow
@pytest.mark.integration
def test_a_nan_on_one_rank_stops_both(tmp_path):
    """NaN rewards on rank 1's rows only: every rank stops with a non-finite loss (agreed before the
    gradient all-reduce, so none waits), summary.json says failed, the checkpoint stays finite."""
    launch(tmp_path / "run", "task=toy2d", "train.rng=keyed", "train.iterations=3", "eval.every=3", "eval.samples=64",
           "reward._target_=faulty_rewards.NaNReward", "+reward.rank=1", ranks=2, fails=True, timeout=120)
    assert_failed_with_finite_weights(tmp_path / "run", "non-finite loss")


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose_config(["task=toy2d", "train.rng=keyed", "device=cuda"])
    with pytest.raises(ConfigError, match="4 processes on this node .* but 2 GPUs"):
        validate(cfg)


def kill_a_rank_when(run_dir, iterations: int, process):
    """SIGKILL one of torchrun's workers once the run has logged `iterations` iterations."""
    import signal
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = run_dir / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= iterations:
            break
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2, workers
    os.kill(int(workers[-1]), signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.slow  # (make test: tests/test_faults_ranks.py kills a rank and resumes)
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


# ------------------------------------------------------------------------------- clusters
def sbatch_text(preset: str, tmp_path) -> tuple[str, dict]:
    """The sbatch file a SLURM preset gives, rendered by submitit as hydra-submitit-launcher
    passes its parameters (no SLURM needed: a stand-in `srun` on PATH satisfies submitit)."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from rlzoo.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["task=toy2d", f"hydra/launcher={preset}"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    for key in ("_target_", "submitit_folder", "name"):
        params.pop(key)
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "srun").write_text("#!/bin/sh\n")
    (fake / "srun").chmod(0o755)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{fake}{os.pathsep}{old_path}"
    try:
        executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "s",
                                         slurm_max_num_timeout=params.pop("max_num_timeout"))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
        return executor._executor._make_submission_file_text("python -m rlzoo.commands.train", "0"), {
            "max_num_timeout": executor._executor.max_num_timeout}
    finally:
        os.environ["PATH"] = old_path


@pytest.mark.parametrize("preset,nodes,tasks,gpus", [("slurm_1gpu", 1, 1, 1), ("slurm_8gpu", 1, 8, 8),
                                                     ("slurm_4x8gpu", 4, 8, 8)])
def test_slurm_presets_requeue_and_place_one_rank_per_gpu(tmp_path, preset, nodes, tasks, gpus):
    text, executor = sbatch_text(preset, tmp_path)
    for line in (f"--nodes={nodes}", f"--ntasks-per-node={tasks}", f"--gpus-per-node={gpus}", "--signal=USR2@300",
                 "--requeue"):
        assert f"#SBATCH {line}\n" in text, line
    assert executor["max_num_timeout"] > 0  # the plugin's default 0 never requeues a timed-out job


@pytest.mark.slow
@pytest.mark.integration
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
    strictly increasing iterations (about a minute)."""
    result = subprocess.run([str(BIN / "rlzoo-train"), "-m", "task=toy2d", "experiment=paper_a", "train.rng=keyed",
                             "train.iterations=300", "eval.every=100", "eval.samples=64", "checkpoint_every=1000",
                             "checkpoint_every_minutes=0.1", "progress_bar=false", "threads=1", "dist.timeout_s=60",
                             "hydra/launcher=local_2rank", "hydra.launcher.timeout_min=1",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith(".")]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_0_log.out"))
    assert "Requeued job" in logs and "resuming" in logs
    assert __import__("json").loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert [r["iteration"] for r in records(run_dir / "metrics.jsonl")] == list(range(1, 301))


def test_checkpoints_follow_the_clock_too(tmp_path):
    """checkpoint_every_minutes saves once that much time has passed since the last checkpoint,
    whatever checkpoint_every says."""
    from common import trainer

    t = trainer(tmp_path, "task=toy2d", "debug=tiny", "train.iterations=3", "checkpoint_every=null",
                "checkpoint_every_minutes=0.000001")
    saved, save = [], t.save_checkpoint
    t.save_checkpoint = lambda: saved.append(t.progress.iteration) or save()
    t.fit()
    assert saved == [0, 1, 2, 3, 3]
