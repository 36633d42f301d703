"""`rlzoo report <multirun dir>`: an ablation table from a sweep's run directories.

Runs are grouped by the overrides that vary across the sweep (seed aside); every cell is a mean
± 95% t interval over the group's seeds. Reads only the JSONL files, summary.json and Hydra's
overrides.yaml of each run, so it works on partial sweeps, on runs that are still going and on
copies without checkpoints. Writes table.md / table.csv / table.tex / runs.csv and plots
(held-out reward vs compute with CI bands, also as small multiples; final reward vs KL) into
<dir>/report/.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rlzoo.config import ConfigError
from rlzoo.errors import one_line_errors
from rlzoo.report.plots import plot, plot_metric
from rlzoo.report.runs import Run, crossing, find_runs, kaplan_meier_median, load_run
from rlzoo.report.tables import Row, final_metric, group_rows, runs_csv, table_rows, to_csv, to_latex, to_markdown
from rlzoo.runs.outputs import OutputDir

__all__ = ["Row", "Run", "crossing", "export", "find_runs", "group_rows", "kaplan_meier_median", "load_run", "main",
           "report", "table_rows"]


def _settings(runs: list[Run]) -> dict:
    """report.threshold / report.baseline as the sweep's config set them (config.yaml of a run)."""
    from rlzoo.runs.reading import load_yaml

    for run in runs:
        path = run.path / "config.yaml"
        if path.exists():
            config = load_yaml(path, "a run's config")
            settings = config.get("report") if isinstance(config, dict) else None
            if settings is not None and not isinstance(settings, dict):
                raise ConfigError(f"{path}: report must be a mapping, got {type(settings).__name__}")
            if settings is not None:
                threshold = settings.get("threshold")
                if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                              or not math.isfinite(threshold)):
                    raise ConfigError(f"{path}: report.threshold must be a finite number or null, got {threshold!r}")
                return settings
    return {}


# What `report` reads from a run directory: all that `--export` copies (no checkpoints, no wandb).
EXPORTED = (".hydra/overrides.yaml", ".hydra/hydra.yaml", "config.yaml", "summary.json", "eval.jsonl",
            "metrics.jsonl", "error.txt")


def export(root: Path, dest: Path, overwrite: bool = False) -> Path:
    """Copy the files the report reads from every run under `root` to `dest` (for committing).
    `dest` follows the rules of every output (rlzoo.runs.outputs): new, empty, or written by an
    earlier export, unless `overwrite`."""
    from rlzoo.runs.outputs import OutputDir

    runs = find_runs(Path(root))
    if not runs:
        raise ConfigError(f"no run directories under {root}")
    files = {str(run.path.relative_to(root) / name): run.path / name
             for run in runs for name in EXPORTED if (run.path / name).exists()}
    out = OutputDir(dest, overwrite)
    out.claim(files)
    for name, source in files.items():
        out.write(name, source.read_bytes())
    out.close()
    return Path(dest)


# What `report` writes; plots of --metrics add curves_<metric>.png.
REPORT_FILES = ("table.md", "table.csv", "table.tex", "runs.csv", "curves.png", "curves_grid.png",
                "reward_vs_kl.png")


def report(root: Path | list[Path], threshold: float | None = None, baseline: str | None = None,
           out_dir: Path | None = None, plots: bool = True, wandb_project: str | None = None,
           metrics: list[str] | None = None, overwrite: bool = False) -> str:
    """Write the table and plots for the runs under `root`; return the Markdown table.

    Several roots (e.g. a sweep and a longer run of one of its rows) go into one table: each run
    gets a `source=<its root's name>` key, so rows of different sweeps stay apart and a baseline
    can be taken from either, e.g. `source=paper_a_ablation,row=epg_elbo_ode`."""
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    if len(roots) > 1 and out_dir is None:
        raise ConfigError(f"several directories ({', '.join(map(str, roots))}) need --out DIR")
    runs, root = _runs_of(roots), roots[0]
    settings = _settings(runs)
    threshold = threshold if threshold is not None else settings.get("threshold")
    baseline = baseline if baseline is not None else settings.get("baseline")
    metrics = list(metrics if metrics is not None else settings.get("metrics") or [])
    keys, rows = group_rows(runs)
    base_label = dict(item.split("=", 1) for item in baseline.split(",")) if baseline else None
    header, cells = table_rows(keys, rows, threshold, base_label, metrics)
    out_dir = Path(out_dir) if out_dir else root / "report"
    out = OutputDir(out_dir, overwrite)
    out.claim([*REPORT_FILES, *(f"curves_{m}.png" for m in metrics)])
    markdown = to_markdown(header, cells)
    notes = _notes(runs, keys, rows, threshold, metrics)
    out.write_text("table.md", markdown + "\n".join(notes) + "\n")
    out.write_text("table.csv", to_csv(header, cells))
    out.write_text("table.tex", to_latex(header, cells))
    out.write_text("runs.csv", runs_csv(runs))
    if plots:
        plot(keys, rows, out)
        for metric in metrics:
            plot_metric(keys, rows, metric, out)
    out.close()
    if wandb_project:
        log_to_wandb(header, cells, out_dir, name=root.name, project=wandb_project)
    return markdown + "\n".join(notes) + "\n"


def _runs_of(roots: list[Path]) -> list:
    """Every run under each root; with several roots, each run's `source` is its root's name."""
    runs = []
    for r in roots:
        found = find_runs(r)
        if not found:
            raise ConfigError(f"no run directories under {r}")
        if len(roots) > 1:
            for run in found:
                run.overrides = {"source": r.name, **run.overrides}
        runs += found
    return runs


def _notes(runs: list, keys: list, rows: list, threshold: float | None, metrics: list[str]) -> list[str]:
    """The lines under the table: what a cell is, how compute to the threshold is read, every run
    that did not complete or was stopped by its wall-clock guard, the metric columns."""
    notes = [f"\n{len(runs)} runs in {len(rows)} rows; cells are mean ± 95% t interval over seeds "
             f"(completed runs only); compute = forward + backward model evaluations per sample."]
    if threshold is not None:
        notes.append(f"NFE to {threshold:g}: where the held-out reward first reaches it, linearly interpolated "
                     f"between the two evaluations around the crossing. A row where some seeds never reach it "
                     f"shows a lower bound on its mean (those seeds counted at the compute they spent) and the "
                     f"Kaplan-Meier median; a row where none does, the compute spent (> budget).")
    for run in runs:
        label = ", ".join(f"{k}={run.overrides.get(k, '-')}" for k in [*keys, "seed"])
        if run.status != "completed":
            notes.append(f"- {label}: {run.status}" + (f" ({run.error})" if run.error else ""))
        elif run.stopped_by_time:
            notes.append(f"- {label}: stopped by its wall-clock guard (train.max_minutes) before its budget: how far "
                         f"it got depends on the machine's speed, so it is not comparable with the other runs")
    if metrics:
        notes.append(f"Columns {', '.join(metrics)}: the final evaluation's values; the first row holds "
                     f"them at iteration 0 (the base model every run starts from).")
        teacher = {m: rows[0].cell([final_metric(r, f"teacher_{m}") for r in rows[0].done])[0] for m in metrics}
        teacher = {m: v for m, v in teacher.items() if not math.isnan(v)}
        if teacher:
            notes.append("The teacher's own samples (eval.teacher_steps) against the data: " +
                         ", ".join(f"{m} {v:.3f}" for m, v in teacher.items()) + ".")
    return notes


def log_to_wandb(header: list[str], cells: list[list[str]], out_dir: Path, name: str, project: str) -> None:
    """The table as a wandb.Table and the plots as images, in a run `<sweep>/report` of the
    sweep's group (offline unless WANDB_MODE says otherwise)."""
    import os

    import wandb

    mode: Any = os.environ.get("WANDB_MODE", "offline")  # (wandb annotates its modes as literals)
    run = wandb.init(project=project, name=f"{name}/report", group=name, job_type="report", mode=mode,
                     dir=str(out_dir), reinit="finish_previous")
    columns: Any = header
    run.log({"report/table": wandb.Table(columns=columns, data=cells),
             **{f"report/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}})
    run.finish()


@one_line_errors("rlzoo report")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlzoo report", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("root", nargs="+", help="a multirun directory (e.g. multirun/smoke) or any tree "
                        "of runs; several go into one table, with a source column (needs --out)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="held-out reward for the compute-to-threshold column (default: the "
                             "sweep's report.threshold)")
    parser.add_argument("--baseline", default=None,
                        help="row the compute ratios are taken against, e.g. row=paper_a")
    parser.add_argument("--out", default=None, help="output directory (default <root>/report)")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated evaluation metrics as more columns and plots, e.g. "
                             "fid_data,fid_teacher (default: the sweep's report.metrics)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out / --export that rlzoo did not write (only the files it writes)")
    parser.add_argument("--wandb", default=None, metavar="PROJECT",
                        help="also log the table (wandb.Table) and plots to wandb PROJECT, run <sweep>/report")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="first copy the runs' JSONL/summary/overrides (no checkpoints) to DIR, "
                             "then report from there (e.g. experiments/results/<sweep>)")
    def error(message: str):  # one line (argparse would print its usage block first)
        raise ConfigError(f"{message}; see rlzoo report --help")
    parser.error = error
    args = parser.parse_args(argv)
    if args.export and len(args.root) > 1:
        parser.error(f"--export takes one directory, got {len(args.root)}: {' '.join(args.root)}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        parser.error(f"--threshold must be a finite number, got {args.threshold}")
    args.out = Path(args.out).expanduser() if args.out else None
    roots = ([export(Path(args.root[0]), Path(args.export).expanduser(), args.overwrite)] if args.export
             else [Path(r) for r in args.root])
    metrics = args.metrics.split(",") if args.metrics else None
    print(report(roots, args.threshold, args.baseline, args.out, not args.no_plots, args.wandb, metrics,
                 args.overwrite))
    print(f"written to {Path(args.out) if args.out else roots[0] / 'report'}/")
