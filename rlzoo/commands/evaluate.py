"""`rlzoo evaluate`: the held-out evaluation (rlzoo.evaluate's fixed protocol) of a run or a base model.

    rlzoo evaluate run_dir=runs/shapes/paper_a/seed0 [weights=ema|current] [eval.samples=1536]
    rlzoo evaluate task=shapes [model.checkpoint=...]          # a base model

A trained run is evaluated from its last checkpoint with its own config (the EMA weights when the
run evaluated EMA weights, unless `weights=` says otherwise); the table goes to
<run_dir>/evaluations/<weights>.json and the grid next to it. A base model is evaluated from its
checkpoint (`grid=path.png` saves a grid).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from rlzoo.errors import one_line_errors
from rlzoo.evaluate import WEIGHTS, EvalProtocol, eval_weights, evaluate, load_run, open_run, protocol_record

USAGE = ("usage: rlzoo evaluate run_dir=DIR [weights=ema|current|base] [key=value ...] | "
         "rlzoo evaluate task=NAME [key=value ...] [grid=PATH.png [--overwrite]]")


@one_line_errors("rlzoo evaluate")
def main(argv: list[str] | None = None) -> dict:
    from rlzoo.config import ConfigError
    from rlzoo.runs.directory import check_run_dir_layout
    from rlzoo.runs.lock import run_lock
    from rlzoo.runs.outputs import check_new_file

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in argv if a.startswith("-")]
    if set(flags) - {"--overwrite"}:
        raise ConfigError(f"unknown option {sorted(set(flags) - {'--overwrite'})[0]}; {USAGE}")
    argv = [a for a in argv if not a.startswith("-")]
    if any("=" not in a for a in argv):
        raise ConfigError(f"{next(a for a in argv if '=' not in a)!r} is not key=value; {USAGE}")
    options = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("run_dir", "weights", "grid"))
    rest = [a for a in argv if a.split("=", 1)[0] not in options]
    weights = options.get("weights")
    if weights is not None and weights not in WEIGHTS:
        raise ConfigError(f"unknown weights={weights!r}; valid: {', '.join(WEIGHTS)}")
    if options.get("grid"):
        options["grid"] = str(Path(options["grid"]).expanduser())
        check_new_file(Path(options["grid"]), "--overwrite" in flags)
    if "run_dir" not in options:
        return _evaluate(None, options, rest)
    run_dir = Path(options["run_dir"])
    open_run(run_dir, rest)  # a bad run directory or key is refused before the lock is taken
    with run_lock(run_dir, "rlzoo evaluate " + " ".join(argv)):
        check_run_dir_layout(run_dir)  # no link where evaluations/ is written
        return _evaluate(run_dir, options, rest)


def _evaluate(run_dir: Path | None, options: dict, overrides: list[str]) -> dict:
    """`rlzoo evaluate`'s body: a run's weights (run_dir) or a base model (run_dir None)."""
    from rlzoo.config import build, compose_config, validate
    from rlzoo.config.build import use_headline
    from rlzoo.policies import make_policy
    from rlzoo.runs import atomic_write_json

    if run_dir is not None:
        cfg, task, policy = load_run(run_dir, overrides)
        weights = options.get("weights", eval_weights(cfg))
    else:
        cfg = compose_config(overrides)
        validate(cfg)
        task = build(cfg.task)
        use_headline(task, build(cfg.reward))
        policy = make_policy(task.load_base_model(cfg.model), cfg.model)
        weights = options.get("weights", "base")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    start = time.perf_counter()
    metrics, (x0, cond) = evaluate(task, policy, WEIGHTS[weights], EvalProtocol.from_config(cfg),
                                   torch.device(cfg.device))
    source = run_dir or cfg.model.get("checkpoint") or cfg.model.get("path") or cfg.model._target_
    print(f"held-out evaluation of {source} ({weights} weights): {cfg.eval.samples} samples, "
          f"{cfg.eval.num_steps}-step Euler, {time.perf_counter() - start:.1f}s")
    for key, value in metrics.items():
        print(f"  {key:<28}{value:.3f}")
    grid = options.get("grid")
    if run_dir is not None:
        out = run_dir / "evaluations"
        atomic_write_json({"weights": weights, "metrics": metrics,
                           "protocol": {**protocol_record(cfg, task), "weights": weights}}, out / f"{weights}.json")
        grid = grid or out / f"{weights}.png"
        print(f"written: {out / f'{weights}.json'}, {grid}")
    if grid:
        task.save_grid(x0, cond, Path(grid))
    return metrics


if __name__ == "__main__":
    main()
