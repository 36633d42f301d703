"""Data parallelism (rlzoo.distributed, rlzoo.rng): keyed random numbers that no split of the batch
changes, the Shard's rows and groups, the validation of a launch (torchrun with 2 gloo ranks against
one process: tests/integration/test_distributed_end_to_end.py)."""
import os

import pytest
import torch

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


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = compose_config(["task=toy2d", "train.rng=keyed", "device=cuda"])
    with pytest.raises(ConfigError, match="4 processes on this node .* but 2 GPUs"):
        validate(cfg)


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
