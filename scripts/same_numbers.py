"""Fingerprints of a few short runs, to show that a change of structure changes no number.

    python scripts/same_numbers.py record OUT.json [NAME ...]   # run the commands below (or those named)
    python scripts/same_numbers.py compare A.json B.json

Each command runs as a user runs it (`rlzoo-train ...` in a new process, one thread). A
fingerprint is every metrics.jsonl record but its timings, the summary's held-out numbers and
compute, and a sha256 of every tensor of the last checkpoint's policy (and critic, where there is
one): equal fingerprints mean bit-identical training, evaluation and weights.
"""
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

BIN = Path(sys.executable).parent
COMMANDS = {
    # make run's default recipe (EPG + ELBO + DPM2 on shapes), its first 20 iterations
    "shapes_default_20": ["train.iterations=20", "eval.every=20"],
    # Paper B: GNDM (R_dm as the reward, a critic) on toy2d, a 2-step student
    "toy2d_gndm": ["experiment=gndm", "task=toy2d", "student.steps=2", "train.iterations=20", "eval.every=10"],
    # Paper B: DMD (distillation, the critic's own generator) on toy2d
    "toy2d_dmd": ["experiment=dmd", "task=toy2d", "train.iterations=20", "eval.every=10"],
    # FlowGRPO: trajectory estimator, SDE sampler, KL on the SDE mean
    "toy2d_flowgrpo": ["experiment=flowgrpo", "task=toy2d", "train.iterations=10", "eval.every=10"],
    # task=t2i on the tiny SD3 with LoRA (Paper A's recipe, the tiny PickScore): the model family's path
    "t2i_sd3_tiny": ["experiment=paper_a", "task=t2i", "model=sd3_tiny", "reward=pickscore", "reward.tiny=true",
                     "debug=tiny", "train.iterations=3", "eval.every=3"],
    # every other recipe on shapes, a few iterations each (work saved must leave every number as it was)
    **{f"shapes_{recipe}": [f"experiment={recipe}", "task=shapes", "train.iterations=4", "eval.every=4",
                            "eval.samples=64"]
       for recipe in ("flowgrpo", "flowgrpo_fast", "diffusionnft", "awm", "dmd", "gndm", "dmdr", "gndmr")},
    # the other model families' adapters (LoRA, Paper A's recipe)
    **{f"t2i_{model}": ["experiment=paper_a", "task=t2i", f"model={model}", "reward=pickscore", "reward.tiny=true",
                        "debug=tiny", "train.iterations=3", "eval.every=3"] for model in ("flux_tiny", "z_image_tiny")},
}
TIMINGS = ("wall", "time", "_s", "seconds", "per_s", "peak_mem")


def untimed(record):
    if isinstance(record, dict):
        return {k: untimed(v) for k, v in record.items() if not any(t in k for t in TIMINGS)}
    if isinstance(record, list):
        return [untimed(v) for v in record]
    return record


def tensors(state, prefix=""):
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(tensors(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            out[prefix + key] = hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return out


def fingerprint(run_dir: Path) -> dict:
    metrics = [untimed(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [untimed(json.loads(line)) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    weights = {k: v for k, v in state.items() if k in ("policy", "critic")}
    return {"metrics": metrics, "eval": evals, "final": summary.get("final"),
            "compute": untimed(summary.get("compute")), "weights": tensors(weights)}


def record(out: Path, names: list[str]) -> None:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in COMMANDS.items():
            if names and name not in names:
                continue
            run_dir = Path(tmp) / name
            command = [str(BIN / "rlzoo-train"), *overrides, "threads=1", "progress_bar=false", f"run_dir={run_dir}",
                       f"task.embedding_cache={Path(tmp) / 'embeddings'}"] if "task=t2i" in overrides else \
                      [str(BIN / "rlzoo-train"), *overrides, "threads=1", "progress_bar=false", f"run_dir={run_dir}"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name} failed: {done.stderr[-2000:]}")
            result[name] = {"command": " ".join(["rlzoo-train", *overrides, "threads=1"]), **fingerprint(run_dir)}
            print(f"{name}: {len(result[name]['metrics'])} iterations, final {result[name]['final']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


def compare(a: Path, b: Path) -> None:
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    same = True
    for name in sorted(set(first) | set(second)):
        if first.get(name) == second.get(name):
            print(f"{name}: identical")
            continue
        same = False
        x, y = first.get(name) or {}, second.get(name) or {}
        print(f"{name}: DIFFERENT in {', '.join(k for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k))}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    {"record": lambda: record(Path(sys.argv[2]), sys.argv[3:]), "compare": lambda: compare(Path(sys.argv[2]), Path(sys.argv[3]))}[
        sys.argv[1]]()
