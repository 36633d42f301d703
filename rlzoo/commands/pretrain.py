"""Pretrain a task's base model with the rectified-flow loss and write its checkpoint.

    rlzoo-pretrain task=toy2d          # -> model.checkpoint (committed; see README for hashes)

Loss: E_{x0, eps, t} || v_θ(x_t, t) - (eps - x0) ||²,  x_t = (1 - t)·x0 + t·eps,  t ~ logit-normal.
Deterministic for a given seed, thread count and torch build.
"""
from __future__ import annotations

import math
import sys
import time

import torch

from rlzoo.errors import one_line_errors
from rlzoo.ops import noised, velocity_target


def pretrain(task, model: torch.nn.Module, steps: int, batch_size: int, lr: float, seed: int,
             log_every: int = 500, warmup: int = 200) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    history, start, running = [], time.perf_counter(), 0.0
    model.train()
    for step in range(1, steps + 1):
        x0, cond = task.pretrain_batch(batch_size, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.sigmoid(torch.randn(batch_size, generator=generator))
        loss = ((model(noised(x0, noise, t), t, cond) - velocity_target(x0, noise)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += float(loss.detach())
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            record = {"step": step, "loss": running / n, "wall_s": time.perf_counter() - start}
            history.append(record)
            print(f"[pretrain] step {step}/{steps} loss {record['loss']:.4f} ({record['wall_s']:.0f}s)", flush=True)
            running = 0.0
    model.eval()
    return history


def run(cfg) -> str:
    from rlzoo.config import build
    from rlzoo.runs import atomic_torch_save
    from rlzoo.tasks.base import resolve_path, sha256_file

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.pretrain.seed))
    task = build(cfg.task)
    model = task.build_model(cfg.model)
    p = cfg.pretrain
    history = pretrain(task, model, p.steps, p.batch_size, p.lr, p.seed, p.log_every)
    path = resolve_path(cfg.model.checkpoint)
    atomic_torch_save({"model": model.state_dict(), "history": history}, path)
    digest = sha256_file(path)
    print(f"[pretrain] wrote {path} sha256 {digest}")
    return digest


@one_line_errors("rlzoo-pretrain")
def main(argv: list[str] | None = None) -> None:
    from rlzoo.config import ConfigError, compose_config
    from rlzoo.ranges import check

    cfg = compose_config(sys.argv[1:] if argv is None else argv)
    p = cfg.get("pretrain")
    if p is None:
        raise ConfigError(f"task={cfg.task.name} has no pretraining recipe (a `pretrain` block); "
                          f"its base model comes from elsewhere")
    try:
        for key in ("steps", "batch_size", "log_every"):
            check(f"pretrain.{key}", p.get(key), 1, integer=True)
        check("pretrain.lr", p.get("lr"), 0, low_open=True)
        check("pretrain.seed", p.get("seed"), integer=True)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    run(cfg)


if __name__ == "__main__":
    main()
