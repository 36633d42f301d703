"""What the work an iteration no longer does cost: per iteration of a recipe on shapes, in-process,
the time in the frozen text encoder's forwards (and their number) and in the EMA updates.

    python scripts/removed_work.py RECIPE                          # this checkout
    PYTHONPATH=/tmp/before python scripts/removed_work.py RECIPE   # another checkout's rlzoo

(For the "before": `git worktree add /tmp/before 22446ad`.) One warm-up iteration, then 5 timed;
2 threads; prints one JSON line.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlzoo.config import build_components, compose_config, validate
from rlzoo.trainer import Trainer


def main(recipe: str, iterations: int = 5) -> dict:
    torch.set_num_threads(2)
    cfg = compose_config([f"experiment={recipe}", "task=shapes", "progress_bar=false", "threads=2"])
    validate(cfg)
    spent = {"text_encoder_s": 0.0, "text_encoder_calls": 0, "ema_s": 0.0}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir), build_components(cfg))
        started = {}

        def before(module, inputs):
            started[id(module)] = time.perf_counter()

        def after(module, inputs, output):
            spent["text_encoder_s"] += time.perf_counter() - started[id(module)]
            spent["text_encoder_calls"] += 1
        for view in ("current", "old", "reference", "ema"):
            encoder = trainer.policy.module(view).text_encoder
            encoder.register_forward_pre_hook(before)
            encoder.register_forward_hook(after)
        for name in ("update_ema", "update_old"):
            def timed(decay, update=getattr(trainer.policy, name)):
                start = time.perf_counter()
                update(decay)
                spent["ema_s"] += time.perf_counter() - start
            setattr(trainer.policy, name, timed)
        trainer.train_step()  # warm-up
        spent.update(text_encoder_s=0.0, text_encoder_calls=0, ema_s=0.0)
        start = time.perf_counter()
        for _ in range(iterations):
            trainer.train_step()
        seconds = (time.perf_counter() - start) / iterations
    return {"recipe": recipe, "rlzoo": str(Path(sys.modules["rlzoo"].__file__).parent), "iteration_s": seconds,
            **{k: v / iterations for k, v in spent.items()}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
