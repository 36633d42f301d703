"""End-to-end runs on toy2d: the run directory's contents, and resume after SIGKILL."""
import json
import signal
import time

from common import REPO, records, rlzoo_train, rlzoo_train_here, wait_for_iterations

SMALL = ["task=toy2d", "threads=1", "progress_bar=false", "train.batch_size=64", "train.group_size=8",
         "train.micro_batch_size=32", "eval.samples=96", "sampler.num_steps=6", "eval.num_steps=6"]


def train(run_dir, *overrides):
    """A small toy2d run, in this process."""
    return rlzoo_train_here(*SMALL, f"run_dir={run_dir}", *overrides)


def test_run_directory_contents(tmp_path):
    run = tmp_path / "run"
    out = train(run, "train.iterations=4", "eval.every=2", "checkpoint_every=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"run directory: {run}" in out.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert set(summary) >= {"status", "base", "final", "best", "compute"}
    assert set(summary["compute"]) >= {"nfe_forward", "nfe_backward", "wall_s", "peak_mem_bytes"}
    assert summary["compute"]["nfe_forward"] > summary["compute"]["nfe_backward"] > 0
    for key in ("base", "final", "best"):
        assert 0.0 <= summary[key]["reward"] <= 1.0
    metrics = records(run / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["likelihood_terms"] == 2 * 5 for m in metrics)  # 2 micro-batches x int(0.99·6)
    assert all(abs(m["ratio_mean"] - 1) < 1e-5 for m in metrics[:1])  # old == current at the start
    evals = records(run / "eval.jsonl")
    assert [e["iteration"] for e in evals] == [0, 2, 4]
    assert (run / "samples" / "before.png").stat().st_size > 0
    assert (run / "samples" / "after.png").stat().st_size > 0
    # a grid per evaluation, named by its iteration and the compute spent by then; the end names them
    grids = sorted(p.name for p in (run / "samples").glob("iter*.png"))
    assert grids == [f"iter{e['iteration']:06d}_nfe{e['nfe_forward'] + e['nfe_backward']}.png" for e in evals]
    assert (run / "samples" / grids[-1]).read_bytes() == (run / "samples" / "after.png").read_bytes()
    assert f"samples: {run / 'samples' / 'before.png'}" in out.stdout and grids[-1] in out.stdout
    assert (run / "checkpoints" / "last.pt").exists()
    assert (run / ".hydra" / "config.yaml").exists()
    again = train(run, "train.iterations=4", "eval.every=2", "checkpoint_every=2")
    assert again.returncode == 0 and "already completed" in again.stdout


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    common = ["train.iterations=30", "eval.every=10", "checkpoint_every=5", "seed=3"]
    reference = train(tmp_path / "reference", *common)
    assert reference.returncode == 0, reference.stderr[-2000:]

    run = tmp_path / "killed"
    proc = rlzoo_train(*SMALL, f"run_dir={run}", *common, wait=False)
    wait_for_iterations(run, 13)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(records(run / "metrics.jsonl")) < 30, "the run finished before it was killed"
    resumed = train(run, *common)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout

    a = json.loads((tmp_path / "reference" / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    assert b["status"] == "completed"
    assert a["final"] == b["final"] and a["base"] == b["base"] and a["best"] == b["best"]
    assert a["compute"]["nfe_forward"] == b["compute"]["nfe_forward"]
    keys = ("iteration", "reward/reward", "loss", "grad_norm", "kl")
    assert [{k: m[k] for k in keys} for m in records(tmp_path / "reference" / "metrics.jsonl")] == \
           [{k: m[k] for k in keys} for m in records(run / "metrics.jsonl")]
    assert [e["reward"] for e in records(tmp_path / "reference" / "eval.jsonl")] == \
           [e["reward"] for e in records(run / "eval.jsonl")]


def test_wandb_logger_offline(tmp_path):
    run = tmp_path / "run"
    out = train(run, "train.iterations=2", "eval.every=2", "logger=wandb")
    assert out.returncode == 0, out.stderr[-2000:]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert len(records(run / "metrics.jsonl")) == 2  # JSONL stays the source of truth
    images = sorted(p.name for p in (offline[0] / "files" / "media" / "images").rglob("*.png"))
    # one grid per evaluation (iterations 0 and 2), under one key so wandb shows them as a slider
    assert len(images) == 2 and all(n.startswith("heldout") for n in images), images
    # the x-axis of every chart (define_metric); wandb's service process writes this file, and under
    # load it was seen to land after the command had exited (the header alone at first), so wait a little
    deadline = time.monotonic() + 30
    while b"compute/nfe" not in (history := b"".join(p.read_bytes() for p in offline[0].glob("*.wandb"))):
        assert time.monotonic() < deadline, history[:200]
        time.sleep(0.5)


def test_report_logs_its_table_to_wandb(tmp_path):
    """`rlzoo report --wandb PROJECT` puts the table in a wandb.Table (offline here)."""
    import shutil

    from rlzoo.report import report

    root = tmp_path / "sweep"
    source = REPO / "experiments" / "results" / "toy2d_default"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("report"))
    report(root, plots=False, wandb_project="rlzoo-test")
    offline = list((root / "report" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    tables = list((offline[0] / "files" / "media" / "table").rglob("*.table.json"))
    assert tables and "final" in tables[0].read_text()


def test_a_debug_run_does_not_take_the_real_runs_directory(tmp_path, capsys, monkeypatch):
    """`... debug=tiny` then the same command without it: both run, in their own directories
    (the default run_dir, relative to where the command runs)."""
    from common import train_here

    monkeypatch.chdir(tmp_path)
    command = ["task=toy2d", "threads=1", "train.iterations=2", "eval.every=2", "eval.samples=16", "progress_bar=false"]
    for extra in (["debug=tiny"], []):
        out = train_here(capsys, *command, *extra)
        assert out.returncode == 0, out.stderr[-2000:]
    # (budgets and how often it evaluates leave the name alone; eval.samples changes what is measured)
    for run in ("runs/debug/toy2d/epg-elbo-dpm2,eval.samples=16/seed0", "runs/toy2d/epg-elbo-dpm2,eval.samples=16/seed0"):
        assert json.loads((tmp_path / run / "summary.json").read_text())["status"] == "completed"
