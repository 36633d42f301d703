"""`rlzoo report <multirun dir>`: an ablation table from a sweep's run directories.

Runs are grouped by the overrides that vary across the sweep (seed aside); every cell is a mean
± 95% t interval over the group's seeds. Reads only the JSONL files, summary.json and Hydra's
overrides.yaml of each run, so it works on partial sweeps, on runs that are still going and on
copies without checkpoints. Writes table.md / table.csv / table.tex / runs.csv and two plots
(held-out reward vs compute with CI bands; final reward vs KL) into <dir>/report/.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlzoo.config import override_dict
from rlzoo.runs import read_jsonl
from rlzoo.stats import mean_ci, ratio_ci

# Overrides that never define a row: they change where or how a run is logged, not what it computes.
IGNORED_KEYS = {"seed", "sweep", "sweep_name", "threads", "progress_bar", "logger"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    status: str  # completed | failed | incomplete
    error: str | None = None
    final: float = math.nan
    best: float = math.nan
    kl: float = math.nan
    nfe: float = math.nan  # forward + backward model evaluations spent
    curve: list[tuple[float, float]] = field(default_factory=list)  # (nfe, held-out reward)

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")

    def compute_to(self, threshold: float) -> float:
        """Model evaluations at the first evaluation whose held-out reward reaches `threshold`."""
        return next((nfe for nfe, reward in self.curve if reward >= threshold), math.nan)


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    return override_dict(OmegaConf.load(path))


def load_run(run_dir: Path) -> Run:
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    status = summary.get("status", "incomplete")
    run = Run(run_dir, _overrides(run_dir), "incomplete" if status == "running" else status,
              summary.get("error"))
    evals = read_jsonl(run_dir / "eval.jsonl")
    run.curve = [(r["nfe_forward"] + r["nfe_backward"], r["reward"]) for r in evals]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if run.status == "completed" and evals:
        run.final = evals[-1]["reward"]
        run.best = max(r["reward"] for r in evals)
        run.nfe = run.curve[-1][0]
        tail = metrics[-max(1, len(metrics) // 10):]  # KL to the reference over the last 10%
        run.kl = sum(r["kl"] for r in tail) / len(tail) if tail else math.nan
    return run


def _job_number(run_dir: Path) -> int:
    """Hydra's job number (launch order = the sweep's grid order), or -1."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.exists():
        return -1
    from omegaconf import OmegaConf

    return int(OmegaConf.select(OmegaConf.load(path), "hydra.job.num", default=-1))


def find_runs(root: Path) -> list[Run]:
    """Every run directory under `root` (one holding .hydra/overrides.yaml or summary.json), in
    the sweep's launch order, so table rows follow the order of the grid."""
    dirs = {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    dirs |= {p.parent for p in root.rglob("summary.json")}
    dirs = sorted((d for d in dirs if d.name != "report"), key=lambda d: (_job_number(d), str(d)))
    return [load_run(d) for d in dirs]


def varying_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.overrides} - IGNORED_KEYS)
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


@dataclass
class Row:
    label: dict[str, str]
    runs: list[Run]

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "failed"]

    def cell(self, values: list[float]) -> tuple[float, float, int]:
        return mean_ci([v for v in values if not math.isnan(v)])

    def never_reached(self, threshold: float) -> float:
        """When no completed seed reached `threshold`: the least compute a seed spent without
        reaching it, a lower bound on the row's compute to it (censored); else nan."""
        if not self.done or any(not math.isnan(r.compute_to(threshold)) for r in self.done):
            return math.nan
        return min(r.nfe for r in self.done)


def group_rows(runs: list[Run]) -> tuple[list[str], list[Row]]:
    keys = varying_keys(runs)
    rows: dict[tuple, Row] = {}
    for run in runs:
        label = tuple((k, run.overrides.get(k, "-")) for k in keys)
        rows.setdefault(label, Row(dict(label), [])).runs.append(run)
    return keys, list(rows.values())


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _fmt_nfe(mean: float, half: float) -> str:
    """Model-evaluation counts in M / k units, e.g. `1.25M ± 0.10M`."""
    if math.isnan(mean):
        return "-"
    scale, unit = next(((s, u) for s, u in ((1e6, "M"), (1e3, "k")) if mean >= s), (1.0, ""))
    digits = 2 if unit else 0
    if math.isnan(half):
        return f"{mean / scale:.{digits}f}{unit}"
    return f"{mean / scale:.{digits}f}{unit} ± {half / scale:.{digits}f}{unit}"


def table_rows(keys: list[str], rows: list[Row], threshold: float | None,
               baseline: dict[str, str] | None) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the ablation table (strings, shared by md / csv / tex)."""
    header = [*keys, "final", "best", "KL to ref", "compute (NFE)"]
    if threshold is not None:
        header += [f"NFE to {threshold:g}", "reached"]
        if baseline:
            header.append("NFE ratio vs " + ",".join(f"{k}={v}" for k, v in baseline.items()))
    header += ["seeds", "failed"]
    base_row = next((r for r in rows if baseline and r.label == baseline), None)
    cells = []
    for row in rows:
        done = row.done
        line = [row.label[k] for k in keys]
        line += [_fmt(*row.cell([r.final for r in done])[:2]), _fmt(*row.cell([r.best for r in done])[:2]),
                 _fmt(*row.cell([r.kl for r in done])[:2], digits=4), _fmt_nfe(*row.cell([r.nfe for r in done])[:2])]
        if threshold is not None:
            reached = [r.compute_to(threshold) for r in done]
            bound = row.never_reached(threshold)  # a lower bound says more than a blank cell
            line += [_fmt_nfe(*row.cell(reached)[:2]) if math.isnan(bound) else f"> {_fmt_nfe(bound, math.nan)}",
                     f"{sum(not math.isnan(v) for v in reached)}/{len(done)}"]
            if baseline:
                line.append(_ratio_cell(row, base_row, threshold))
        line += [str(len(done)), ", ".join(f"seed {r.seed}" for r in row.failed) or "0"]
        cells.append(line)
    return header, cells


def _ratio_cell(row: Row, base: Row | None, threshold: float) -> str:
    if base is None:
        return "-"
    mine = [v for v in (r.compute_to(threshold) for r in row.done) if not math.isnan(v)]
    theirs = [v for v in (r.compute_to(threshold) for r in base.done) if not math.isnan(v)]
    bound = row.never_reached(threshold)
    if not math.isnan(bound) and theirs:  # censored: budget / baseline's mean is a lower bound
        return f"> {bound / (sum(theirs) / len(theirs)):.2f}"
    ratio, low, high = ratio_ci(mine, theirs)
    if math.isnan(ratio):
        return "-"
    return f"{ratio:.2f}" if math.isnan(low) else f"{ratio:.2f} [{low:.2f}, {high:.2f}]"


def to_markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], cells: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(cells)
    return out.getvalue()


def to_latex(header: list[str], cells: list[list[str]]) -> str:
    def tex(s: str) -> str:
        return s.replace("±", r"$\pm$").replace("_", r"\_").replace("%", r"\%")

    lines = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
             " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in row) + r" \\" for row in cells]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot(keys: list[str], rows: list[Row], out_dir: Path) -> list[Path]:
    """curves.png (held-out reward vs model evaluations, mean and 95% band over seeds) and
    reward_vs_kl.png (final reward vs KL to the reference, one point per row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from rlzoo.stats import t_quantile_975

    def name(row: Row) -> str:
        return ", ".join(row.label[k] for k in keys) or "all runs"

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        curves = [r.curve for r in row.runs if len(r.curve) > 1]
        if not curves:
            continue
        grid = np.linspace(0, min(c[-1][0] for c in curves), 50)
        ys = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c]) for c in curves])
        mean = ys.mean(0)
        (line,) = ax.plot(grid / 1e6, mean, label=f"{name(row)} (n={len(curves)})")
        if len(curves) > 1:
            half = t_quantile_975(len(curves) - 1) * ys.std(0, ddof=1) / np.sqrt(len(curves))
            ax.fill_between(grid / 1e6, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("model evaluations, forward + backward (millions)")
    ax.set_ylabel("held-out reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out_dir / "curves.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        kl, kl_half, n = row.cell([r.kl for r in row.done])
        reward, reward_half, _ = row.cell([r.final for r in row.done])
        if n:
            ax.errorbar(kl, reward, xerr=np.nan_to_num(kl_half), yerr=np.nan_to_num(reward_half),
                        fmt="o", capsize=3, label=name(row))
    ax.set_xlabel("KL to the reference (mean over the last 10% of iterations)")
    ax.set_ylabel("final held-out reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "reward_vs_kl.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def runs_csv(runs: list[Run]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = sorted({k for r in runs for k in r.overrides})
    writer.writerow(["run_dir", *keys, "status", "final", "best", "kl", "nfe", "error"])
    for r in runs:
        writer.writerow([r.path.name, *[r.overrides.get(k, "") for k in keys], r.status,
                         r.final, r.best, r.kl, r.nfe, r.error or ""])
    return out.getvalue()


def _settings(runs: list[Run]) -> dict:
    """report.threshold / report.baseline as the sweep's config set them (config.yaml of a run)."""
    from omegaconf import OmegaConf

    for run in runs:
        path = run.path / "config.yaml"
        if path.exists():
            report = OmegaConf.load(path).get("report")
            if report is not None:
                return OmegaConf.to_container(report)
    return {}


# What `report` reads from a run directory: all that `--export` copies (no checkpoints, no wandb).
EXPORTED = (".hydra/overrides.yaml", ".hydra/hydra.yaml", "config.yaml", "summary.json", "eval.jsonl",
            "metrics.jsonl", "error.txt")


def export(root: Path, dest: Path) -> Path:
    """Copy the files the report reads from every run under `root` to `dest` (for committing)."""
    import shutil

    for run in find_runs(Path(root)):
        for name in EXPORTED:
            source = run.path / name
            if source.exists():
                target = Path(dest) / run.path.relative_to(root) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    return Path(dest)


def report(root: Path | list[Path], threshold: float | None = None, baseline: str | None = None,
           out_dir: Path | None = None, plots: bool = True) -> str:
    """Write the table and plots for the runs under `root`; return the Markdown table.

    Several roots (e.g. a sweep and a longer run of one of its rows) go into one table: each run
    gets a `source=<its root's name>` key, so rows of different sweeps stay apart and a baseline
    can be taken from either, e.g. `source=paper_a_ablation,row=epg_elbo_ode`."""
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    if len(roots) > 1 and out_dir is None:
        raise SystemExit(f"rlzoo report: several directories ({', '.join(map(str, roots))}) need --out DIR")
    runs = []
    for r in roots:
        found = find_runs(r)
        if not found:
            raise SystemExit(f"rlzoo report: no run directories under {r}")
        if len(roots) > 1:
            for run in found:
                run.overrides = {"source": r.name, **run.overrides}
        runs += found
    root = roots[0]
    settings = _settings(runs)
    threshold = threshold if threshold is not None else settings.get("threshold")
    baseline = baseline if baseline is not None else settings.get("baseline")
    keys, rows = group_rows(runs)
    base_label = dict(item.split("=", 1) for item in baseline.split(",")) if baseline else None
    header, cells = table_rows(keys, rows, threshold, base_label)
    out_dir = Path(out_dir) if out_dir else root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(header, cells)
    notes = [f"\n{len(runs)} runs in {len(rows)} rows; cells are mean ± 95% t interval over seeds "
             f"(completed runs only); compute = forward + backward model evaluations per sample."]
    for run in runs:
        if run.status != "completed":
            label = ", ".join(f"{k}={run.overrides.get(k, '-')}" for k in [*keys, "seed"])
            notes.append(f"- {label}: {run.status}" + (f" ({run.error})" if run.error else ""))
    (out_dir / "table.md").write_text(markdown + "\n".join(notes) + "\n")
    (out_dir / "table.csv").write_text(to_csv(header, cells))
    (out_dir / "table.tex").write_text(to_latex(header, cells))
    (out_dir / "runs.csv").write_text(runs_csv(runs))
    if plots:
        plot(keys, rows, out_dir)
    return markdown + "\n".join(notes) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlzoo report", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="+", help="a multirun directory (e.g. multirun/smoke) or any tree "
                        "of runs; several go into one table, with a source column (needs --out)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="held-out reward for the compute-to-threshold column (default: the "
                             "sweep's report.threshold)")
    parser.add_argument("--baseline", default=None,
                        help="row the compute ratios are taken against, e.g. row=paper_a")
    parser.add_argument("--out", default=None, help="output directory (default <root>/report)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--export", default=None, metavar="DIR",
                        help="first copy the runs' JSONL/summary/overrides (no checkpoints) to DIR, "
                             "then report from there (e.g. experiments/results/<sweep>)")
    args = parser.parse_args(argv)
    if args.export and len(args.root) > 1:
        parser.error(f"--export takes one directory, got {len(args.root)}: {' '.join(args.root)}")
    roots = [export(Path(args.root[0]), Path(args.export))] if args.export else [Path(r) for r in args.root]
    print(report(roots, args.threshold, args.baseline, args.out, not args.no_plots))
    print(f"written to {Path(args.out) if args.out else roots[0] / 'report'}/")


if __name__ == "__main__":
    main()
