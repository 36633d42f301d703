"""`make bench`: time and peak memory per training iteration of the two likelihood estimators as
the number of sampler steps grows (a benchmark, not a test: these numbers are machine-dependent).

    python -m rlzoo.commands.bench [--steps 10 20 40] [--iterations 2] [--out runs/bench] [overrides ...]

Each (estimator, steps) cell runs in its own process, so the peak memory of one cell cannot leak
into the next: elbo with the DPM-Solver++(2M) ODE sampler (its default partner) and trajectory
with the FlowGRPO SDE sampler, same task, batch, micro-batch and optimizer, KL off so that only the
estimator differs. After one warm-up iteration the cell times `--iterations` iterations. Peak
memory is `torch.cuda.max_memory_allocated` on a GPU; on CPU it is the process's peak resident
set size (ru_maxrss), reported with its growth over the set-up (model, optimizer, data; measured
before the first iteration) so that what training adds is visible.

Then the command as users run it: `rlzoo-train experiment=<recipe> task=shapes` in its own process
(its files, progress bar and checkpoints), for every recipe, its seconds per iteration from its
records' time stamps, split into the trainer's phases and the rest; and, in `--rounds` rounds,
paper_a and flowgrpo beside the in-process trainer and rlzoo.commands.bare_loop (the same model
passes in plain torch, checked), with the ratios' geometric means and 95% intervals over rounds.
`--only estimators|command|bare` runs one part (`bare`: the trainer against the plain loop alone).
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


BARE_RECIPES = ("paper_a", "flowgrpo")
PHASES = ("rollout", "reward", "train")


def compare_with_bare_loop(recipe: str, iterations: int, overrides: list[str]) -> dict:
    """rlzoo's trainer and the bare loop (rlzoo.commands.bare_loop) on the same recipe, task, model and
    batch, in this process, iterations interleaved (one rlzoo, one bare) after a warm-up of each,
    so that both see the same machine load: mean seconds per phase."""
    import tempfile

    import torch

    from rlzoo.commands.bare_loop import BareLoop
    from rlzoo.config import build_components, compose_config, validate
    from rlzoo.trainer import Trainer

    cfg = compose_config([f"experiment={recipe}", "task=shapes", "progress_bar=false", *overrides])
    validate(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    batch, group = int(cfg.train.batch_size), int(cfg.train.group_size)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir), build_components(cfg))
        task = trainer.task
        bare = BareLoop(task.load_base_model(cfg.model), float(cfg.optimizer.lr), cfg.optimizer.betas,
                        float(cfg.optimizer.get("weight_decay", 0.0)))
        generator = torch.Generator().manual_seed(0)

        def bare_iteration() -> dict:
            start = time.perf_counter()
            prompts = task.sample_train_prompts(batch // group, generator)
            cond = task.group_conditioning(prompts, group)
            setup = time.perf_counter() - start
            times = getattr(bare, recipe)(cond, cond.group_ids, lambda x0: task.score(x0, cond)["reward"],
                                          task.sample_shape, generator, steps=int(cfg.sampler.num_steps))
            times["rollout"] += setup  # rlzoo's rollout phase also draws the prompts
            return times

        def rlzoo_iteration() -> dict:
            before = dict(trainer.progress.compute.wall)
            trainer.train_step()
            return {k: trainer.progress.compute.wall[k] - before.get(k, 0.0) for k in PHASES}

        # warm-up, counting the rows each side passes through the network (with and without
        # gradients): the two loops must do the same model passes for the timing to mean anything
        passes = {"rlzoo": [0, 0], "bare": [0, 0]}
        for name, run in (("rlzoo", rlzoo_iteration), ("bare", bare_iteration)):
            def count(module, inputs, output, name=name):
                if type(module) is type(bare.current):
                    passes[name][torch.is_grad_enabled()] += inputs[0].shape[0]
            hook = torch.nn.modules.module.register_module_forward_hook(count)
            try:
                run()
            finally:
                hook.remove()
        totals = {"rlzoo": dict.fromkeys(PHASES, 0.0), "bare": dict.fromkeys(PHASES, 0.0)}
        nfe_before = trainer.progress.compute.nfe
        for _ in range(iterations):
            for name, run in (("rlzoo", rlzoo_iteration), ("bare", bare_iteration)):
                for phase, seconds in run().items():
                    totals[name][phase] += seconds / iterations
        nfe = (trainer.progress.compute.nfe - nfe_before) / iterations
    return {"recipe": recipe, "iterations": iterations, "threads": cfg.get("threads"), "device": str(cfg.device),
            "batch_size": batch, "sampler_steps": int(cfg.sampler.num_steps), "rlzoo_nfe_per_iteration": nfe,
            **{f"{name}_rows_{kind}": passes[name][i] for name in passes for i, kind in enumerate(("no_grad", "grad"))}, **{
                f"{name}_{phase}_s": totals[name][phase] for name in totals for phase in PHASES}}


COMMAND_RECIPES = ("paper_a", "flowgrpo", "flowgrpo_fast", "diffusionnft", "awm", "dmd", "gndm", "dmdr", "gndmr")


def time_command(recipe: str, warmup: int, iterations: int, overrides: list[str], task: str = "shapes") -> dict:
    """`rlzoo-train experiment=<recipe> task=<task>` as users run it, in its own process: its
    progress bar, metrics.jsonl, console lines, config and summary files, and a checkpoint every
    10 iterations. The held-out evaluation runs only before the first iteration and after the last
    (`eval.every` past the end, 64 samples), outside the timed window, since a plain loop has none.
    Seconds per iteration between the records of iterations `warmup` and `warmup + iterations`
    (their `time` stamps), and how they split: the trainer's phases (each record's cumulative
    `wall_split_s`) and the rest (logging, progress, files, checkpoints: outside the trainer's phases)."""
    import tempfile

    from rlzoo.runs.files import read_jsonl

    if warmup < 1 or iterations < 1:
        raise ValueError(f"time_command takes warmup >= 1 and iterations >= 1, got {warmup} and {iterations}")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [str(Path(sys.executable).parent / "rlzoo-train"), f"experiment={recipe}", f"task={task}",
                   f"train.iterations={warmup + iterations}", "eval.every=1000000", "eval.samples=64",
                   f"run_dir={run_dir}", *overrides]
        launched = time.time()
        out = subprocess.run(command, capture_output=True, text=True)
        ended = time.time()
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(command[1:3])} failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
        records = read_jsonl(run_dir / "metrics.jsonl")
    first, last = records[warmup - 1], records[warmup + iterations - 1]
    phases = {k: (last["wall_split_s"].get(k, 0.0) - first["wall_split_s"].get(k, 0.0)) / iterations
              for k in last["wall_split_s"] if k != "eval"}
    seconds = (last["time"] - first["time"]) / iterations
    nfe = (last["nfe_forward"] + last["nfe_backward"] - first["nfe_forward"] - first["nfe_backward"]) / iterations
    before_first = records[0]["wall_split_s"]  # the evaluation before training, and the first iteration
    return {"recipe": recipe, "iterations": iterations, "command_s": seconds, "nfe_per_iteration": nfe,
            **{f"command_{k}_s": v for k, v in phases.items()}, "command_outside_s": seconds - sum(phases.values()),
            # once per run: from launch to the first iteration (imports, config, model, files; not the
            # evaluation), and from the last record to the exit (the final evaluation, checkpoint, summary)
            "startup_s": records[0]["time"] - launched - sum(before_first.values()), "end_s": ended - records[-1]["time"]}


def command_rounds(rounds: int, iterations: int, overrides: list[str], recipes=COMMAND_RECIPES,
                   compiled: bool = True, task: str = "shapes") -> list[dict]:
    """Every recipe's command timed once, and `rounds` rounds of paper_a and flowgrpo: the command,
    then the in-process trainer against the plain loop (rlzoo.commands.bare_loop), so the three
    see the same machine load; one row per (round, recipe). With `compiled`, the first round also
    times paper_a's and flowgrpo's command with model.compile=true (its compilation in the two
    warm-up iterations, outside the timed window), against that round's plain loop. The plain loop
    is written for shapes: on another `task` the command is timed alone, eager and compiled."""
    rows = []
    for round_ in range(rounds):
        for recipe in recipes if round_ == 0 else [r for r in recipes if r in BARE_RECIPES]:
            row = {"round": round_, **time_command(recipe, 2, iterations, overrides, task)}
            if recipe in BARE_RECIPES and task == "shapes":
                row.update(in_own_process(["--bare-one", recipe, "--bare-iterations", str(iterations), *overrides],
                                          f"bench of {recipe} against the bare loop"))
                if row["rlzoo_nfe_per_iteration"] != row["nfe_per_iteration"]:
                    raise RuntimeError(f"{recipe}: the command spent {row['nfe_per_iteration']} model evaluations per "
                                       f"iteration, the trainer {row['rlzoo_nfe_per_iteration']}: not the same work")
            rows.append(row)
            print(command_table([row]).splitlines()[-1], flush=True)
            if round_ == 0 and compiled and recipe in BARE_RECIPES:  # what a plain loop does not do: torch.compile
                plain = {k: v for k, v in row.items() if k.startswith("bare_")}  # (this round's plain loop)
                rows.append({"round": round_, **time_command(recipe, 2, iterations, [*overrides, "model.compile=true"], task),
                             **plain, "recipe": f"{recipe}, model.compile=true"})
                print(command_table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def command_table(rows: list[dict]) -> str:
    """Per recipe: the command's seconds per iteration and where they go, beside the in-process
    trainer and the plain loop; ratios as the geometric mean over rounds with a 95% t interval."""
    import math
    from statistics import mean

    from rlzoo.stats import mean_ci

    def interval(logs: list[float]) -> str:  # per-round log ratios -> geometric mean [95% t interval]
        centre, half, _ = mean_ci(logs)
        if math.isnan(half):
            return f"{math.exp(centre):.3f}"
        return f"{math.exp(centre):.3f} [{math.exp(centre - half):.3f}, {math.exp(centre + half):.3f}]"

    lines = ["| recipe | rounds | model evaluations/iteration | command s/iteration | rollout | reward | learners | train "
             "| outside the phases | trainer in-process s | plain loop s | command / plain | trainer / plain "
             "| command start-up s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        learners = [k for k in mine[0] if k.startswith("command_") and k.endswith("_s") and any(r[k] for r in mine)
                    and k not in ("command_s", "command_outside_s", *(f"command_{p}_s" for p in PHASES))]
        part = {p: mean(r[f"command_{p}_s"] for r in mine) for p in PHASES}
        cells = [recipe, str(len(mine)), f"{mine[0]['nfe_per_iteration']:,.0f}", f"{mean(r['command_s'] for r in mine):.3f}",
                 *(f"{part[p]:.3f}" for p in ("rollout", "reward")),
                 f"{mean(sum(r[k] for k in learners) for r in mine):.3f}" if learners else "",
                 f"{part['train']:.3f}", f"{mean(r['command_outside_s'] for r in mine):.3f}"]
        plain = [sum(r[f"bare_{p}_s"] for p in PHASES) for r in mine] if "bare_train_s" in mine[0] else None
        trainer = [sum(r[f"rlzoo_{p}_s"] for p in PHASES) for r in mine] if "rlzoo_train_s" in mine[0] else None
        cells += [f"{mean(trainer):.3f}" if trainer else "", f"{mean(plain):.3f}" if plain else "",
                  interval([math.log(r["command_s"] / b) for r, b in zip(mine, plain)]) if plain else "",
                  interval([math.log(a / b) for a, b in zip(trainer, plain)]) if trainer and plain else ""]
        cells.append(f"{mean(r['startup_s'] for r in mine):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Dense bf16 peak FLOP/s by device name, for model FLOP utilisation (vendors' datasheets).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
GPU_MODELS = ("sd35m_random", "flux_random", "z_image_random")  # each family's full-size transformer, random weights
GPU_RUN = ["experiment=paper_a", "task=t2i", "reward=pickscore", "reward.tiny=true",
           "device=cuda", "train.batch_size=16", "train.group_size=8", "train.micro_batch_size=8",
           "eval.samples=16", "eval.batch_size=16", "progress_bar=false"]


def gpu_measure(compiled: bool, iterations: int, overrides: list[str], model: str = "sd35m_random") -> dict:
    """Paper A's recipe on a family's full-size transformer (`model`: SD3.5-Medium's or FLUX.1-dev's,
    random weights, LoRA r 32, 512², bf16), eager or compiled: seconds per phase, images per second, peak memory, and the model FLOP
    utilisation (FLOPs of one iteration counted by torch's FlopCounterMode, over the measured
    time, over the device's dense bf16 peak)."""
    import tempfile

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from rlzoo.config import build_components, compose_config, validate
    from rlzoo.trainer import Trainer

    cfg = compose_config([*GPU_RUN, f"model={model}", f"model.compile={str(compiled).lower()}", *overrides])
    validate(cfg)
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, Path(run_dir), build_components(cfg))
        start = time.perf_counter()
        trainer.train_step()  # warm-up (and compilation)
        warmup = time.perf_counter() - start
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        before = dict(trainer.progress.compute.wall)
        start = time.perf_counter()
        for _ in range(iterations):
            trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / iterations
        split = {k: (trainer.progress.compute.wall[k] - before.get(k, 0.0)) / iterations for k in PHASES}
        peak = torch.cuda.max_memory_allocated(device) if cuda else 0
        flops = None
        if not compiled:  # FlopCounterMode counts eager ops (the compiled graph does the same math)
            with FlopCounterMode(display=False) as counter:
                trainer.train_step()
            flops = counter.get_total_flops()
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"device": name, "model": model, "compiled": compiled, "iterations": iterations, "batch_size": int(cfg.train.batch_size),
            "warmup_s": warmup, "s_per_iteration": seconds, **{f"{k}_s": v for k, v in split.items()},
            "images_per_s": int(cfg.train.batch_size) / seconds, "peak_bytes": peak, "flops_per_iteration": flops,
            "peak_bf16_flops": peak_flops}


def gpu_table(rows: list[dict]) -> str:
    flops = next((r["flops_per_iteration"] for r in rows if r["flops_per_iteration"]), None)
    lines = ["| mode | s/iteration | rollout s | reward s | train s | images/s | peak memory (GiB) | TFLOP/iteration "
             "| model FLOP utilisation |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = (f"{flops / r['s_per_iteration'] / r['peak_bf16_flops']:.1%}"
               if flops and r["peak_bf16_flops"] else "n/a")
        lines.append(f"| {'compiled' if r['compiled'] else 'eager'} | {r['s_per_iteration']:.2f} | {r['rollout_s']:.2f} "
                     f"| {r['reward_s']:.2f} | {r['train_s']:.2f} | {r['images_per_s']:.2f} | {r['peak_bytes'] / 2**30:.1f} "
                     f"| {(flops or 0) / 1e12:.0f} | {mfu} |")
    return "\n".join(lines)


def bare_table(rows: list[dict]) -> str:
    lines = ["| recipe | phase | rlzoo s/iteration | bare loop s/iteration | rlzoo / bare |", "|---|---|---|---|---|"]
    for r in rows:
        for phase in (*PHASES, "iteration"):
            ours = sum(r[f"rlzoo_{p}_s"] for p in PHASES) if phase == "iteration" else r[f"rlzoo_{phase}_s"]
            bare = sum(r[f"bare_{p}_s"] for p in PHASES) if phase == "iteration" else r[f"bare_{phase}_s"]
            label = "**iteration**" if phase == "iteration" else phase
            lines.append(f"| {r['recipe']} | {label} | {ours:.3f} | {bare:.3f} | {ours / bare:.3f} |")
    return "\n".join(lines)


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


def in_own_process(argv: list[str], what: str) -> dict:
    """`python -m rlzoo.commands.bench argv...` in a new process (its own peak memory, threads and compile
    cache): the JSON record it prints last, or RuntimeError '<what> failed: <its last error line>'."""
    out = subprocess.run([sys.executable, "-m", "rlzoo.commands.bench", *argv], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@one_line_errors("rlzoo bench")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlzoo.commands.bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace estimators.json/.md in --out even where rlzoo did not write them")
    parser.add_argument("--bare-iterations", type=int, default=10,
                        help="timed iterations per measurement of the command, the trainer and the bare loop")
    parser.add_argument("--only", choices=("estimators", "command", "bare"),
                        help="run one benchmark: the estimators, the command against the trainer and the plain loop "
                             "(make bench runs these two), or the trainer against the plain loop alone")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of paper_a and flowgrpo in the command benchmark (every other recipe: one)")
    parser.add_argument("--recipes", nargs="+", choices=COMMAND_RECIPES, default=list(COMMAND_RECIPES),
                        help="the recipes the command benchmark times")
    parser.add_argument("--task", default="shapes",
                        help="the command benchmark's task (the plain loop is shapes'; elsewhere the command alone)")
    parser.add_argument("--no-compiled", action="store_true",
                        help="skip the command benchmark's model.compile=true rows (minutes of compilation)")
    parser.add_argument("--gpu", action="store_true",
                        help="instead: Paper A's recipe on SD3.5-Medium's transformer (random weights), bf16, eager "
                             "and compiled, on the GPU (for scripts/gpu_check.sh)")
    parser.add_argument("--model", choices=GPU_MODELS, default="sd35m_random",
                        help="with --gpu: which family's full-size transformer (random weights)")
    parser.add_argument("--gpu-one", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single cell
    parser.add_argument("--bare-one", help=argparse.SUPPRESS)  # one recipe against the bare loop
    args, overrides = parser.parse_known_args(argv)
    if args.one:
        print(json.dumps(measure(overrides, args.iterations)))
        return
    if args.bare_one:
        print(json.dumps(compare_with_bare_loop(args.bare_one, args.bare_iterations, overrides)))
        return
    if args.gpu_one:
        print(json.dumps(gpu_measure(args.gpu_one == "compiled", args.iterations, overrides, args.model)))
        return
    if args.gpu:
        out_dir = OutputDir(Path(args.out), args.overwrite)
        out_dir.claim(["gpu.json", "gpu.md"])
        rows = []
        for mode in ("eager", "compiled"):  # each in its own process: its own peak memory and compile cache
            try:
                rows.append(in_own_process(["--gpu-one", mode, "--iterations", str(args.iterations), "--model",
                                            args.model, *overrides],
                                           f"bench --gpu {mode}"))
            except RuntimeError as exc:  # (the other mode may still run)
                print(exc)
                continue
            print(gpu_table(rows[-1:]).splitlines()[-1], flush=True)
        out_dir.write_text("gpu.json", json.dumps(rows, indent=1))
        out_dir.write_text("gpu.md", gpu_table(rows) + "\n")
        out_dir.close()
        print("\n" + gpu_table(rows))
        return
    names = {"estimators": ["estimators.json", "estimators.md"], "command": ["command.json", "command.md"],
             "bare": ["bare_loop.json", "bare_loop.md"]}
    parts = [args.only] if args.only else ["estimators", "command"]
    out_dir = OutputDir(Path(args.out), args.overwrite)
    out_dir.claim([n for k in parts for n in names[k]])  # before minutes of work
    if "estimators" in parts:
        estimators(args, overrides, out_dir)
    if "command" in parts:
        rows = command_rounds(args.rounds, args.bare_iterations, overrides, tuple(args.recipes), not args.no_compiled,
                              args.task)
        out_dir.write_text("command.json", json.dumps(rows, indent=1))
        out_dir.write_text("command.md", command_table(rows) + "\n")
        print("\n" + command_table(rows))
    if "bare" in parts:
        rows = [in_own_process(["--bare-one", recipe, "--bare-iterations", str(args.bare_iterations), *overrides],
                               f"bench of {recipe} against the bare loop") for recipe in BARE_RECIPES]
        out_dir.write_text("bare_loop.json", json.dumps(rows, indent=1))
        out_dir.write_text("bare_loop.md", bare_table(rows) + "\n")
        print("\n" + bare_table(rows))
    out_dir.close()
    print(f"\nwritten to {out_dir.path}")


def estimators(args, overrides: list[str], out_dir) -> None:
    rows = []
    for estimator, sampler in PAIRS:
        for steps in args.steps:
            cell = [f"estimator={estimator}", f"sampler={sampler}", f"sampler.num_steps={steps}", *overrides]
            rows.append(in_own_process(["--one", "--iterations", str(args.iterations), *cell],
                                       f"bench cell {' '.join(cell)}"))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    out_dir.write_text("estimators.json", json.dumps(rows, indent=1))
    out_dir.write_text("estimators.md", table(rows) + "\n")
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
