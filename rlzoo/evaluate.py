"""Evaluate a task's base model (or any checkpoint with `model.checkpoint=`) on held-out prompts.

    python -m rlzoo.evaluate task=shapes [eval.samples=1536] [grid=base.png]
"""
from __future__ import annotations

import sys
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    from rlzoo.config import build, compose_config
    from rlzoo.policies import Policy
    from rlzoo.trainer import eval_sampler, evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    grid = next((a.split("=", 1)[1] for a in argv if a.startswith("grid=")), None)
    cfg = compose_config([a for a in argv if not a.startswith("grid=")])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    task = build(cfg.task)
    policy = Policy(task.load_base_model(cfg.model))
    sampler = eval_sampler(cfg)
    start = time.perf_counter()
    metrics, (x0, cond) = evaluate(task, policy, "reference", sampler, cfg.eval.samples,
                                        cfg.eval.seed, cfg.eval.batch_size, torch.device(cfg.device))
    print(f"held-out evaluation of {cfg.model.checkpoint}: {cfg.eval.samples} samples, "
          f"{cfg.eval.num_steps}-step Euler, {time.perf_counter() - start:.1f}s")
    for key, value in metrics.items():
        print(f"  {key:<28}{value:.3f}")
    if grid:
        from pathlib import Path

        task.save_grid(x0, cond, Path(grid))
    return metrics


if __name__ == "__main__":
    main()
