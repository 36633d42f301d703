"""Data parallelism over torch.distributed: one process (rank) per GPU, launched by torchrun.

Every rank holds the whole model and draws the same prompts; rank r rolls out and scores whole
prompt groups (`group_split`), the rewards are gathered so every rank computes the advantages of
the whole batch, losses are divided by the global row count and the trainable gradients summed
(`sync_grads`: one all-reduce per optimizer step, no DDP wrapper, which fails when a backward
leaves a second adapter set unused). With `train.rng=keyed` each row's random numbers do not
depend on the rank that draws them (rlzoo.rng), so W ranks give the single-process result up to
float reduction order. Rank 0 alone writes files and logs. Every decision that could differ
between ranks (stop, a non-finite loss) is agreed through a collective, so no rank waits forever.

Nothing here runs, and torch.distributed is not initialised, in a single process.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:  # (torch is imported where it is used: `rlzoo-train --help` needs none of it)
    from torch import Tensor


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives run: cuda for nccl, cpu for gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun (or any env:// launcher) exported; (0, 1, 0)
    for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def export_submitit_env() -> None:
    """Under submitit with several tasks per job (hydra/launcher=slurm_8gpu, local_2rank), each
    task is a rank: export the env:// variables torchrun would have set, from submitit's job
    environment. Nothing to do under torchrun, in one process, or with one task per job."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:  # (the device is chosen from LOCAL_RANK, all GPUs stay visible)
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@contextlib.contextmanager
def world_of(nproc: int | None):
    """For the body of the `with`, the environment a launcher of `nproc` ranks on this machine
    will give its ranks (WORLD_SIZE, LOCAL_WORLD_SIZE), so validation sees their geometry; nothing
    for None."""
    if not nproc:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    os.environ.update(WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_device(device: str) -> None:
    """`device` names a device this machine has (cpu, cuda, cuda:<index>, mps); ValueError, one line."""
    import torch

    try:
        kind = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a device; valid: cpu, cuda, cuda:<index>, mps") from None
    if kind.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device={device} but this machine has no CUDA GPU (torch {torch.__version__}); "
                             f"use device=cpu")
        if kind.index is not None and kind.index >= count:
            raise ValueError(f"device={device} but this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    elif kind.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device} but MPS is not available here; use device=cpu")
    elif kind.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r}: rlzoo runs on cpu, cuda or mps")


def check_launch(rng: str, batch: int, group_size: int, device: str) -> None:
    """Under torchrun (WORLD_SIZE > 1, as the launcher exported it): keyed random numbers, at
    least one prompt group per process, no more processes on a node than GPUs. ValueError, one
    line; nothing to check in one process."""
    _, world, _ = world_from_env()
    if world == 1:
        return
    launched = f"under torchrun with {world} processes (WORLD_SIZE={world})"
    if rng != "keyed":
        raise ValueError(f"train.rng=stream {launched}: each row's random numbers would depend on how the batch "
                         f"is split; use train.rng=keyed (the same run on any number of processes)")
    if batch // group_size < world:
        raise ValueError(f"train.batch_size={batch} / train.group_size={group_size} gives {batch // group_size} "
                         f"prompt groups per iteration, fewer than the {world} processes {launched}; each process "
                         f"needs a group: train.batch_size>={world * group_size}, or fewer processes")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device.startswith("cuda"):
        import torch

        if local > torch.cuda.device_count():
            raise ValueError(f"{local} processes on this node {launched} but {torch.cuda.device_count()} GPUs; "
                             f"start at most one process per GPU (torchrun --nproc_per_node)")


def is_main_process() -> bool:
    """Rank 0 (or no launcher): the process that owns the run directory."""
    return world_from_env()[0] == 0


def init(device: str, timeout_s: float) -> Dist:
    """Join the process group the launcher set up (nccl on CUDA, gloo on the CPU), with an
    explicit collective timeout; a single process joins nothing."""
    rank, world, local_rank = world_from_env()
    if world == 1:
        return SINGLE
    import torch
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(timeout_s))
        # the launcher's store, under a prefix per restart: after torchrun --max_restarts restarts
        # the workers, a rank must not read the address its peer had in the previous attempt
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore(f"rlzoo/attempt{attempt}", store),
                                rank=rank, world_size=world, timeout=timeout)
    if rank == 0:
        print(f"[rlzoo] data parallel over {world} ranks ({'nccl' if cuda else 'gloo'})")
    return Dist(rank, world, local_rank, f"cuda:{local_rank}" if cuda else "cpu")


def shutdown(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def group_split(groups: int, world: int) -> list[range]:
    """The prompt groups each rank r rolls out: a contiguous block, g with floor(g·W/P) = r, as
    even as the split allows (P groups, W ranks; P >= W)."""
    return [range(math.ceil(r * groups / world), math.ceil((r + 1) * groups / world)) for r in range(world)]


def sync_grads(parameters, d: Dist) -> None:
    """Sum the gradients of `parameters` over ranks (a parameter without a gradient on a rank
    adds zeros), in float32, in one flat all-reduce."""
    if not d.active:
        return
    import torch
    import torch.distributed as dist

    params = [p for p in parameters if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().flatten()
                      for p in params]).to(d.device)
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(device=p.device, dtype=p.dtype).clone()
        offset += n


def gather_rows(t: Tensor, counts: list[int], d: Dist) -> Tensor:
    """Concatenate every rank's rows in rank order (rank r holds counts[r] rows)."""
    if not d.active:
        return t
    import torch
    import torch.distributed as dist

    width = max(counts)
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=d.device)
    padded[: t.shape[0]] = t.to(d.device)
    parts = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)]).to(t.device)


def reduce_numbers(values: dict, d: Dist, maximum: tuple = ()) -> dict:
    """Sum each number over ranks (the keys in `maximum`: their maximum), in one all-reduce each way."""
    if not d.active:
        return dict(values)
    import torch
    import torch.distributed as dist

    keys = sorted(values)
    out = {}
    for op, chosen in ((dist.ReduceOp.SUM, [k for k in keys if k not in maximum]),
                       (dist.ReduceOp.MAX, [k for k in keys if k in maximum])):
        if chosen:
            packed = torch.tensor([float(values[k]) for k in chosen], dtype=torch.float64, device=d.device)
            dist.all_reduce(packed, op=op)
            out.update(zip(chosen, packed.tolist()))
    return out


def all_keys(values: dict, d: Dist) -> list:
    """The keys any rank's `values` has, sorted (so every rank reduces the same numbers)."""
    if not d.active:
        return sorted(values)
    import torch.distributed as dist

    every: list = [None] * d.world
    dist.all_gather_object(every, sorted(values))
    return sorted(set().union(*every))


def agree(flag: bool, d: Dist) -> bool:
    """True on every rank when it is True on any rank."""
    if not d.active:
        return bool(flag)
    return reduce_numbers({"flag": float(bool(flag))}, d, maximum=("flag",))["flag"] > 0


@contextlib.contextmanager
def rank_zero_first(d: Dist):
    """The body on rank 0 first, then on the other ranks (what rank 0 caches on the way, such as
    t2i's text embeddings, the others then read instead of computing and writing it again)."""
    if d.active and not d.is_main:
        barrier(d)
    yield
    if d.active and d.is_main:
        barrier(d)


def minibatch_rows(batch: int, group_size: int, minibatches: int, generator) -> list[Tensor]:
    """Row indices of each optimizer step's minibatch: whole prompt groups, shuffled, split into
    `minibatches` equal parts (one part holding every row when minibatches = 1)."""
    import torch

    if minibatches == 1:
        return [torch.arange(batch)]
    groups = torch.randperm(batch // group_size, generator=generator)
    return [(part.sort().values[:, None] * group_size + torch.arange(group_size)).flatten()
            for part in groups.chunk(minibatches)]


@dataclass(frozen=True)
class Step:
    """One optimizer step's minibatch as this rank holds it: `local`, its rows within this rank's
    rollout; `rows`, the same rows numbered in the whole batch; `total`, the step's rows over
    all ranks (the loss's denominator)."""
    local: Tensor
    rows: Tensor
    total: int


class Shard:
    """One iteration's batch as this rank holds it (README, Data parallelism): its prompt groups
    and rows, the random numbers of each use for those rows, and every exchange that makes the
    ranks' work one batch's: rewards gathered, gradients summed, statistics and compute reduced.
    Built once per iteration, so the loop never asks which rank it runs on or how numbers are
    drawn; in one process it holds every row and each exchange is the identity.

    Rank r rolls out a contiguous block of prompt groups (`group_split`); `randomness` is the
    run's rlzoo.rng.Randomness (keyed or a stream)."""

    def __init__(self, d: Dist, batch: int, group_size: int, randomness=None, iteration: int = 0):
        import torch

        self.dist, self.batch, self.group_size = d, int(batch), int(group_size)
        self.randomness, self.iteration = randomness, int(iteration)
        split = group_split(self.batch // self.group_size, d.world)
        self.rows = torch.arange(split[d.rank].start * self.group_size, split[d.rank].stop * self.group_size)
        self.counts = [len(groups) * self.group_size for groups in split]  # every rank's rows

    @property
    def groups(self) -> int:
        return self.batch // self.group_size

    def draws(self, purpose: str):
        """This iteration's random numbers of `purpose` for this rank's rows (rlzoo.rng)."""
        if self.randomness is None:
            raise RuntimeError("this Shard was made without the run's randomness")
        return self.randomness.draws(purpose, self.iteration, self.rows)

    def mine(self, batch_rows):
        """This rank's rows of something indexed by the batch's rows (a Conditioning)."""
        return batch_rows.select(self.rows) if self.dist.active else batch_rows

    def gather(self, values: dict) -> dict:
        """Every rank's rows of each tensor, in rank order: the whole batch's."""
        return {key: gather_rows(value, self.counts, self.dist) for key, value in values.items()}

    def on_every_rank(self, fn):
        return on_every_rank(fn, self.dist)

    def agree(self, flag: bool) -> bool:
        return agree(flag, self.dist)

    def steps(self, inner_epochs: int, minibatches: int):
        """The optimizer steps of this iteration (inner_epochs x minibatches), each with its rows
        on this rank (a rank without rows in a step still takes part in its exchanges)."""
        shuffle = self.draws("minibatch").shared if self.randomness is not None else None
        first, held = int(self.rows[0]), len(self.rows)
        for _ in range(int(inner_epochs)):
            for rows in minibatch_rows(self.batch, self.group_size, int(minibatches), shuffle):
                local = rows[(rows >= first) & (rows < first + held)] - first
                yield Step(local, local + first, len(rows))

    def share(self, rows: int) -> float:
        """The fraction of the batch's mean that a mean over `rows` of this rank's rows carries."""
        return 1.0 if rows == self.batch else rows / self.batch

    def sum_gradients(self, parameters) -> None:
        """Each parameter's gradient summed over ranks."""
        sync_grads(parameters, self.dist)

    def sum(self, values: dict) -> dict:
        """Each number summed over ranks (every rank holds the same keys)."""
        return reduce_numbers(values, self.dist)

    def reduce(self, stats: dict, maximum: tuple = ()) -> dict:
        """Each statistic summed over ranks (`maximum`: the largest), every rank reducing the keys
        any rank has (a rank without rows in a step has fewer)."""
        if not self.dist.active:
            return dict(stats)
        return reduce_numbers({key: stats.get(key, 0.0) for key in all_keys(stats, self.dist)}, self.dist,
                              maximum=maximum)

    @contextlib.contextmanager
    def counting(self, compute):
        """Every rank counts the model evaluations of all ranks for the body of the `with`."""
        before = (compute.nfe_forward, compute.nfe_backward)
        yield
        if self.dist.active:
            spent = reduce_numbers({"nfe_forward": compute.nfe_forward - before[0],
                                    "nfe_backward": compute.nfe_backward - before[1]}, self.dist)
            compute.nfe_forward = before[0] + int(spent["nfe_forward"])
            compute.nfe_backward = before[1] + int(spent["nfe_backward"])


class RankFailed(RuntimeError):
    """Another rank failed: this one stops too, with that rank's one-line error."""


T = TypeVar("T")


def on_every_rank(fn: Callable[[], T], d: Dist) -> T:
    """fn() on every rank; if it raises on any rank, every rank raises: its own exception where it
    failed, elsewhere RankFailed with the first failed rank's error (no rank is left waiting in
    the next collective)."""
    if not d.active:
        return fn()
    import torch.distributed as dist

    result: T | None = None
    error: Exception | None = None
    try:
        result = fn()
    except Exception as exc:
        error = exc
    messages: list = [None] * d.world
    dist.all_gather_object(messages, None if error is None else " ".join(f"{type(error).__name__}: {error}".split()))
    failed = [(rank, message) for rank, message in enumerate(messages) if message]
    if error is not None:
        raise error
    if failed:
        raise RankFailed(f"rank {failed[0][0]} failed: {failed[0][1]}")
    return result  # pyright: ignore[reportReturnType] (fn returned on this rank)


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()
