"""`make bench`: time and peak memory per training iteration of the two likelihood estimators as
the number of sampler steps grows (a benchmark, not a test: these numbers are machine-dependent).

    python -m rlzoo.bench [--steps 10 20 40] [--iterations 2] [--out runs/bench] [overrides ...]

Each (estimator, steps) cell runs in its own process, so the peak memory of one cell cannot leak
into the next: elbo with the DPM-Solver++(2M) ODE sampler (its default partner) and trajectory
with the FlowGRPO SDE sampler, same task, batch, micro-batch and optimizer, KL off so that only the
estimator differs. After one warm-up iteration the cell times `--iterations` iterations. Peak
memory is `torch.cuda.max_memory_allocated` on a GPU; on CPU it is the process's peak resident
set size (ru_maxrss), reported with its growth over the set-up (model, optimizer, data; measured
before the first iteration) so that what training adds is visible.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rlzoo.errors import one_line_errors
from rlzoo.runs.outputs import OutputDir

PAIRS = (("elbo", "dpm2"), ("trajectory", "flow_sde"))


def measure(overrides: list[str], iterations: int) -> dict:
    """One cell, in this process: setup, a warm-up iteration, then `iterations` timed ones."""
    import tempfile

    import torch

    from rlzoo.config import build_components, compose_config, validate
    from rlzoo.runs import peak_memory_bytes
    from rlzoo.trainer import Trainer

    cfg = compose_config(["progress_bar=false", "kl=none", *overrides])
    validate(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = torch.device(cfg.device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir), build_components(cfg))
        if device.type == "cuda":
            torch.cuda.synchronize()
            setup = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            setup = peak_memory_bytes(device)
        trainer.train_step()  # warm-up (allocator pools, optimizer state); its peak counts, its time not
        before = dict(trainer.progress.compute.wall)
        nfe_before = trainer.progress.compute.nfe
        start = time.perf_counter()
        for _ in range(iterations):
            record = trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / iterations
        peak = peak_memory_bytes(device)
        nfe = (trainer.progress.compute.nfe - nfe_before) / iterations
    split = {k: (trainer.progress.compute.wall[k] - before[k]) / iterations for k in ("rollout", "train")}
    return {"estimator": cfg.estimator.name, "sampler": cfg.sampler.name,
            "steps": int(cfg.sampler.num_steps), "terms": record["likelihood_terms"], "nfe_per_iteration": nfe,
            "s_per_iteration": seconds, "rollout_s": split["rollout"], "train_s": split["train"],
            "peak_bytes": peak, "setup_bytes": setup, "device": str(device),
            "batch_size": int(cfg.train.batch_size), "micro_batch_size": int(cfg.train.micro_batch_size)}


def table(rows: list[dict]) -> str:
    """Markdown table of the cells."""
    gpu = rows and rows[0]["device"].startswith("cuda")
    memory = "peak allocated (MiB)" if gpu else "peak RSS (MiB)"
    lines = [f"| estimator | sampler | steps | terms/sample | model evaluations/iteration | s/iteration | "
             f"rollout s | train s | {memory} | growth over set-up (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['estimator']} | {r['sampler']} | {r['steps']} | {r['terms'] // -(-r['batch_size'] // r['micro_batch_size'])} "
                     f"| {r['nfe_per_iteration']:,.0f} | {r['s_per_iteration']:.2f} | {r['rollout_s']:.2f} | {r['train_s']:.2f} "
                     f"| {r['peak_bytes'] / 2**20:.0f} | {(r['peak_bytes'] - r['setup_bytes']) / 2**20:.0f} |")
    return "\n".join(lines)


@one_line_errors("rlzoo bench")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlzoo.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace estimators.json/.md in --out even where rlzoo did not write them")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single cell
    args, overrides = parser.parse_known_args(argv)
    if args.one:
        print(json.dumps(measure(overrides, args.iterations)))
        return
    out_dir = OutputDir(Path(args.out), args.overwrite)
    out_dir.claim(["estimators.json", "estimators.md"])  # refused before minutes of measurement
    rows = []
    for estimator, sampler in PAIRS:
        for steps in args.steps:
            cell = [f"estimator={estimator}", f"sampler={sampler}", f"sampler.num_steps={steps}", *overrides]
            out = subprocess.run([sys.executable, "-m", "rlzoo.bench", "--one",
                                  "--iterations", str(args.iterations), *cell],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"bench cell {' '.join(cell)} failed: {last}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    out_dir.write_text("estimators.json", json.dumps(rows, indent=1))
    out_dir.write_text("estimators.md", table(rows) + "\n")
    out_dir.close()
    print("\n" + table(rows))
    print(f"\nwritten to {out_dir.path}/estimators.md and estimators.json")


if __name__ == "__main__":
    main()
