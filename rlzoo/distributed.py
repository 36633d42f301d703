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
from typing import TYPE_CHECKING

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

    every = [None] * d.world
    dist.all_gather_object(every, sorted(values))
    return sorted(set().union(*every))


def agree(flag: bool, d: Dist) -> bool:
    """True on every rank when it is True on any rank."""
    if not d.active:
        return bool(flag)
    return reduce_numbers({"flag": float(bool(flag))}, d, maximum=("flag",))["flag"] > 0


class RankFailed(RuntimeError):
    """Another rank failed: this one stops too, with that rank's one-line error."""


def on_every_rank(fn, d: Dist):
    """fn() on every rank; if it raises on any rank, every rank raises: its own exception where it
    failed, elsewhere RankFailed with the first failed rank's error (no rank is left waiting in
    the next collective)."""
    if not d.active:
        return fn()
    import torch.distributed as dist

    try:
        result, error = fn(), None
    except Exception as exc:
        result, error = None, exc
    messages = [None] * d.world
    dist.all_gather_object(messages, None if error is None else " ".join(f"{type(error).__name__}: {error}".split()))
    failed = [(rank, message) for rank, message in enumerate(messages) if message]
    if error is not None:
        raise error
    if failed:
        raise RankFailed(f"rank {failed[0][0]} failed: {failed[0][1]}")
    return result


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()
