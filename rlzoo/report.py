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
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlzoo.config import ConfigError, override_dict
from rlzoo.errors import one_line_errors
from rlzoo.runs import read_jsonl, read_summary
from rlzoo.runs.directory import FAILED_STARTS
from rlzoo.runs.outputs import OutputDir
from rlzoo.stats import mean_ci, ratio_ci

# Overrides that never define a row: they change where or how a run is logged, not what it computes.
IGNORED_KEYS = {"seed", "sweep", "sweep_name", "threads", "progress_bar", "logger"}


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    status: str  # completed | failed | interrupted | running | incomplete (no summary)
    error: str | None = None
    final: float = math.nan
    best: float = math.nan
    kl: float = math.nan
    nfe: float = math.nan  # forward + backward model evaluations spent
    curve: list[tuple[float, float]] = field(default_factory=list)  # (nfe, held-out reward)
    evals: list[dict] = field(default_factory=list)  # every eval.jsonl record (metrics beyond the reward)

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")

    def compute_to(self, threshold: float) -> float:
        """Model evaluations at which the held-out reward first reaches `threshold`, linearly
        interpolated between the evaluation below it and the first one at or above it (nan if
        no evaluation reaches it)."""
        return crossing(self.curve, threshold)


def crossing(curve: list[tuple[float, float]], threshold: float) -> float:
    """First x where the piecewise-linear curve through (x, y) points reaches y = threshold."""
    for i, (x, y) in enumerate(curve):
        if y >= threshold:
            if i == 0:
                return x
            x0, y0 = curve[i - 1]
            return x0 + (threshold - y0) / (y - y0) * (x - x0)
    return math.nan


def kaplan_meier_median(times: list[float], reached: list[bool]) -> float:
    """Median of the time-to-event from right-censored samples (`reached[i]` False: only known to
    exceed `times[i]`), by the Kaplan-Meier estimator S(t) = prod over event times t_j <= t of
    (1 - d_j/n_j): the first event time where S drops to 0.5 or below; nan if it never does."""
    survival = 1.0
    for t in sorted({t for t, r in zip(times, reached) if r}):
        at_risk = sum(1 for u in times if u >= t)
        events = sum(1 for u, r in zip(times, reached) if r and u == t)
        survival *= 1 - events / at_risk
        if survival <= 0.5:
            return t
    return math.nan


def _overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    return override_dict(OmegaConf.load(path))


def load_run(run_dir: Path) -> Run:
    """A run's record as the report reads it, or a ConfigError naming the file that does not fit."""
    try:
        return _load_run(run_dir)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"run {run_dir} has a record the report cannot read ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:120]}); its eval.jsonl, metrics.jsonl and summary.json "
                          f"must be rlzoo's") from None


def _load_run(run_dir: Path) -> Run:
    summary = read_summary(run_dir) or {}
    status = summary.get("status", "incomplete")
    run = Run(run_dir, _overrides(run_dir), status, summary.get("error"))
    evals = read_jsonl(run_dir / "eval.jsonl")
    run.curve = [(r["nfe_forward"] + r["nfe_backward"], r["reward"]) for r in evals]
    run.evals = evals
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if run.status == "completed" and evals:
        run.final = evals[-1]["reward"]
        run.best = max(r["reward"] for r in evals)
        run.nfe = run.curve[-1][0]
        tail = metrics[-max(1, len(metrics) // 10):]  # KL to the reference over the last 10%
        run.kl = sum(r["kl"] for r in tail) / len(tail) if tail and _has_kl(run_dir) else math.nan
    return run


def _has_kl(run_dir: Path) -> bool:
    """False when the run's config has no KL term (kl=none): its logged 0 is not a measurement."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return True
    from omegaconf import DictConfig, OmegaConf

    try:
        config = OmegaConf.load(path)
    except Exception as exc:  # a damaged config.yaml
        raise ConfigError(f"{path} is not a run's config ({type(exc).__name__})") from None
    return not isinstance(config, DictConfig) or OmegaConf.select(config, "kl.name", default=None) != "none"


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
    dirs = sorted((d for d in dirs if d.name != "report" and FAILED_STARTS not in d.relative_to(root).parts),
                  key=lambda d: (_job_number(d), str(d)))
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

    def censored(self, threshold: float) -> bool:
        """Some completed seeds reached `threshold` and some did not."""
        reached = [not math.isnan(r.compute_to(threshold)) for r in self.done]
        return any(reached) and not all(reached)

    def lower_bound_mean(self, threshold: float) -> float:
        """Mean compute to `threshold` with the seeds that never reached it counted at the compute
        they spent: a lower bound on the row's mean compute to it."""
        values = [r.nfe if math.isnan(r.compute_to(threshold)) else r.compute_to(threshold) for r in self.done]
        return sum(values) / len(values) if values else math.nan

    def median_to(self, threshold: float) -> float:
        """Kaplan-Meier median compute to `threshold` (seeds that never reach it are censored at
        the compute they spent)."""
        times = [r.nfe if math.isnan(r.compute_to(threshold)) else r.compute_to(threshold) for r in self.done]
        return kaplan_meier_median(times, [not math.isnan(r.compute_to(threshold)) for r in self.done])


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


def final_metric(run: Run, metric: str) -> float:
    return float(run.evals[-1].get(metric, math.nan)) if run.status == "completed" and run.evals else math.nan


def base_metric(run: Run, metric: str) -> float:
    """The metric at the run's iteration-0 evaluation (the base model), nan without one."""
    first = run.evals[0] if run.evals else {}
    return float(first.get(metric, math.nan)) if first.get("iteration") == 0 else math.nan


def table_rows(keys: list[str], rows: list[Row], threshold: float | None,
               baseline: dict[str, str] | None, metrics: list[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the ablation table (strings, shared by md / csv / tex). `metrics`: more
    evaluation metrics as columns (final values), and a first row with their values at iteration
    0 — the base model, which every row starts from (the first row's runs)."""
    if metrics and not keys:  # one row: name it, so the iteration-0 row can be told apart
        keys = ["row"]
        rows = [Row({"row": "all runs"}, row.runs) for row in rows]
    header = [*keys, "final", *metrics, "best", "KL to ref", "compute (NFE)"]
    differences = list(metrics) if baseline else []  # Δ metric vs the baseline row, mean ± 95% CI
    header += [f"Δ{m} vs " + ",".join(f"{k}={v}" for k, v in baseline.items()) for m in differences]
    if threshold is not None:
        header += [f"NFE to {threshold:g}", "reached"]
        if baseline:
            header.append("NFE ratio vs " + ",".join(f"{k}={v}" for k, v in baseline.items()))
    header += ["seeds", "failed"]
    base_row = next((r for r in rows if baseline and r.label == baseline), None)
    cells = []
    if metrics and rows:
        first = [r for r in rows[0].runs if r.evals]
        line = ["iteration 0 (base)"] + ["-"] * (len(keys) - 1) if keys else []
        line += [_fmt(*rows[0].cell([base_metric(r, "reward") for r in first])[:2]),
                 *[_fmt(*rows[0].cell([base_metric(r, m) for r in first])[:2]) for m in metrics], "-", "-", "0"]
        if differences and base_row is not None:
            from rlzoo.stats import difference_ci

            line += [_fmt(*difference_ci([base_metric(r, m) for r in first],
                                         [final_metric(r, m) for r in base_row.done])) for m in differences]
        else:
            line += ["-"] * len(differences)
        if threshold is not None:
            line += ["-", "-"] + (["-"] if baseline else [])
        cells.append(line + [str(len(first)), "0"])
    for row in rows:
        done = row.done
        line = [row.label[k] for k in keys]
        line += [_fmt(*row.cell([r.final for r in done])[:2]),
                 *[_fmt(*row.cell([final_metric(r, m) for r in done])[:2]) for m in metrics],
                 _fmt(*row.cell([r.best for r in done])[:2]),
                 _fmt(*row.cell([r.kl for r in done])[:2], digits=4), _fmt_nfe(*row.cell([r.nfe for r in done])[:2])]
        line += [_difference_cell(row, base_row, m) for m in differences]
        if threshold is not None:
            reached = [r.compute_to(threshold) for r in done]
            line += [_compute_to_cell(row, threshold), f"{sum(not math.isnan(v) for v in reached)}/{len(done)}"]
            if baseline:
                line.append(_ratio_cell(row, base_row, threshold))
        line += [str(len(done)), ", ".join(f"seed {r.seed}" for r in row.failed) or "0"]
        cells.append(line)
    return header, cells


def _difference_cell(row: Row, base: Row | None, metric: str) -> str:
    """mean(row) − mean(baseline) of a metric's final values, ± the 95% interval of the difference."""
    if base is None or row is base:
        return "-"
    from rlzoo.stats import difference_ci

    values = [[v for v in (final_metric(r, metric) for r in x.done) if not math.isnan(v)] for x in (row, base)]
    return _fmt(*difference_ci(*values))


def _compute_to_cell(row: Row, threshold: float) -> str:
    """Every seed reached it: mean ± 95% t interval. Some did not: a lower bound on the mean (those
    seeds counted at their budget) and the Kaplan-Meier median. None did: above the budget."""
    bound = row.never_reached(threshold)  # a lower bound says more than a blank cell
    if not math.isnan(bound):
        return f"> {_fmt_nfe(bound, math.nan)}"
    if row.censored(threshold):
        median = row.median_to(threshold)
        shown = f"> {_fmt_nfe(min(r.nfe for r in row.done if math.isnan(r.compute_to(threshold))), math.nan)}" \
            if math.isnan(median) else _fmt_nfe(median, math.nan)
        return f"≥ {_fmt_nfe(row.lower_bound_mean(threshold), math.nan)} (KM median {shown})"
    return _fmt_nfe(*row.cell([r.compute_to(threshold) for r in row.done])[:2])


def _ratio_cell(row: Row, base: Row | None, threshold: float) -> str:
    if base is None:
        return "-"
    mine = [v for v in (r.compute_to(threshold) for r in row.done) if not math.isnan(v)]
    theirs = [v for v in (r.compute_to(threshold) for r in base.done) if not math.isnan(v)]
    if base.censored(threshold) or not theirs:
        return "-"  # no baseline mean to divide by
    base_mean = sum(theirs) / len(theirs)
    bound = row.never_reached(threshold)
    if not math.isnan(bound):  # censored: budget / baseline's mean is a lower bound
        return f"> {bound / base_mean:.2f}"
    if row.censored(threshold):
        median = row.median_to(threshold)
        text = f"≥ {row.lower_bound_mean(threshold) / base_mean:.2f}"
        return text if math.isnan(median) else f"{text} (KM medians {median / median_of(theirs):.2f})"
    ratio, low, high = ratio_ci(mine, theirs)
    if math.isnan(ratio):
        return "-"
    return f"{ratio:.2f}" if math.isnan(low) else f"{ratio:.2f} [{low:.2f}, {high:.2f}]"


def median_of(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


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


def _styles(n: int) -> list[tuple[str, str]]:
    """A distinct (colour, line style) per row: 10 colours, and the style changes with the colour
    so two rows never share both."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#000000",
               "#bcbd22", "#17becf"]
    lines = ["-", "--", "-.", ":"]
    return [(colours[i % len(colours)], lines[(i + i // len(colours)) % len(lines)]) for i in range(n)]


def _mean_band(curves: list[list[tuple[float, float]]], low: float, high: float):
    """(grid, mean, lower, upper) of the curves on a common compute grid; the 95% t band is clipped
    to [low, high], the metric's range."""
    import numpy as np

    from rlzoo.stats import t_quantile_975

    grid = np.linspace(0, min(c[-1][0] for c in curves), 60)
    ys = np.array([np.interp(grid, [p[0] for p in c], [p[1] for p in c]) for c in curves])
    mean = ys.mean(0)
    half = (t_quantile_975(len(curves) - 1) * ys.std(0, ddof=1) / np.sqrt(len(curves))
            if len(curves) > 1 else np.zeros_like(mean))
    return grid, mean, np.clip(mean - half, low, high), np.clip(mean + half, low, high)


def plot(keys: list[str], rows: list[Row], out: "OutputDir") -> list[Path]:
    """curves.png (held-out reward vs model evaluations, mean and 95% band over seeds, one colour
    and line style per row, legend outside the axes), curves_grid.png (small multiples, one panel
    per row over the others in grey; when there are more than 4 rows) and reward_vs_kl.png
    (final reward vs KL to the reference, one point per row). Bands are clipped to [0, 1] when every
    reward lies in it (an accuracy or a rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def name(row: Row) -> str:
        return ", ".join(row.label[k] for k in keys) or "all runs"

    drawn = [(row, [r.curve for r in row.runs if len(r.curve) > 1]) for row in rows]
    drawn = [(row, curves) for row, curves in drawn if curves]
    rewards = [y for _, curves in drawn for c in curves for _, y in c]
    low, high = (0.0, 1.0) if rewards and min(rewards) >= 0 and max(rewards) <= 1 else (-np.inf, np.inf)
    styles = dict(zip((id(row) for row, _ in drawn), _styles(len(drawn))))
    bands = {id(row): _mean_band(curves, low, high) for row, curves in drawn}
    xlabel, ylabel = "model evaluations, forward + backward (millions)", "held-out reward"

    fig, ax = plt.subplots(figsize=(9, 4.8))
    for row, curves in drawn:
        grid, mean, lower, upper = bands[id(row)]
        colour, line = styles[id(row)]
        ax.plot(grid / 1e6, mean, color=colour, linestyle=line, linewidth=1.6, label=f"{name(row)} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(grid / 1e6, lower, upper, color=colour, alpha=0.08, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    paths = [out.save_figure("curves.png", fig, dpi=120)]
    plt.close(fig)

    if len(drawn) > 4:
        columns = 4
        panels = (len(drawn) + columns - 1) // columns
        fig, axes = plt.subplots(panels, columns, figsize=(3.2 * columns, 2.4 * panels), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, (row, curves) in zip(axes.flat, drawn):
            for other, _ in drawn:
                grid, mean, _, _ = bands[id(other)]
                ax.plot(grid / 1e6, mean, color="0.8", linewidth=0.8)
            grid, mean, lower, upper = bands[id(row)]
            colour, line = styles[id(row)]
            ax.fill_between(grid / 1e6, lower, upper, color=colour, alpha=0.25, linewidth=0)
            ax.plot(grid / 1e6, mean, color=colour, linestyle=line, linewidth=1.6)
            ax.set_title(f"{name(row)} (n={len(curves)})", fontsize=8)
        for ax in list(axes.flat)[len(drawn):]:
            ax.axis("off")
        fig.supxlabel(xlabel, fontsize=9)
        fig.supylabel(ylabel, fontsize=9)
        fig.tight_layout()
        paths.append(out.save_figure("curves_grid.png", fig, dpi=110))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    positive_kl = True
    for i, row in enumerate(rows):
        kl, kl_half, n = row.cell([r.kl for r in row.done])
        reward, reward_half, _ = row.cell([r.final for r in row.done])
        colour, _ = _styles(len(rows))[i]
        if n:
            # intervals clipped to what the quantities can be: KL >= 0, the reward in its range
            kl_half, reward_half = np.nan_to_num(kl_half), np.nan_to_num(reward_half)
            xerr = [[min(kl_half, kl)], [kl_half]]
            yerr = [[reward - max(reward - reward_half, low)], [min(reward + reward_half, high) - reward]]
            ax.errorbar(kl, reward, xerr=xerr, yerr=yerr, fmt="os^Dv<>p*h"[i % 10], color=colour, capsize=3,
                        label=name(row))
            positive_kl = positive_kl and kl > 0
    if positive_kl and rows:
        ax.set_xscale("log")  # KLs of different regularisers span orders of magnitude
    ax.set_xlabel("KL to the reference (mean over the last 10% of iterations)")
    ax.set_ylabel("final held-out reward")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:  # every row ran without a KL term (kl=none)
        ax.text(0.5, 0.5, "no KL term in these runs (kl=none)", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    paths.append(out.save_figure("reward_vs_kl.png", fig, dpi=120))
    plt.close(fig)
    return paths


def plot_metric(keys: list[str], rows: list[Row], metric: str, out: "OutputDir") -> Path:
    """curves_<metric>.png: an evaluation metric vs model evaluations, mean and 95% band over seeds."""
    import math as _math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    values = [e[metric] for row in rows for r in row.runs for e in r.evals if metric in e]
    low = 0.0 if values and min(values) >= 0 else -_math.inf  # a distance's band stays >= 0
    for (colour, line), row in zip(_styles(len(rows)), rows):
        curves = [[(e["nfe_forward"] + e["nfe_backward"], e[metric]) for e in r.evals
                   if not _math.isnan(e.get(metric, _math.nan))] for r in row.runs]
        curves = [c for c in curves if len(c) > 1]
        if not curves:
            continue
        grid, mean, lower, upper = _mean_band(curves, low, _math.inf)
        label = ", ".join(row.label[k] for k in keys) or "all runs"
        ax.plot(grid / 1e6, mean, color=colour, linestyle=line, linewidth=1.6, label=f"{label} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(grid / 1e6, lower, upper, color=colour, alpha=0.08, linewidth=0)
    ax.set_xlabel("model evaluations, forward + backward (millions)")
    ax.set_ylabel(f"held-out {metric}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    path = out.save_figure(f"curves_{metric}.png", fig, dpi=120)
    plt.close(fig)
    return path


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
            try:
                report = OmegaConf.load(path).get("report")
                settings = OmegaConf.to_container(report) if report is not None else None
            except Exception as exc:  # a damaged or foreign config.yaml
                raise ConfigError(f"{path} is not a run's config ({type(exc).__name__})") from None
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
    runs = []
    for r in roots:
        found = find_runs(r)
        if not found:
            raise ConfigError(f"no run directories under {r}")
        if len(roots) > 1:
            for run in found:
                run.overrides = {"source": r.name, **run.overrides}
        runs += found
    root = roots[0]
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
    notes = [f"\n{len(runs)} runs in {len(rows)} rows; cells are mean ± 95% t interval over seeds "
             f"(completed runs only); compute = forward + backward model evaluations per sample."]
    if threshold is not None:
        notes.append(f"NFE to {threshold:g}: where the held-out reward first reaches it, linearly interpolated "
                     f"between the two evaluations around the crossing. A row where some seeds never reach it "
                     f"shows a lower bound on its mean (those seeds counted at the compute they spent) and the "
                     f"Kaplan-Meier median; a row where none does, the compute spent (> budget).")
    for run in runs:
        if run.status != "completed":
            label = ", ".join(f"{k}={run.overrides.get(k, '-')}" for k in [*keys, "seed"])
            notes.append(f"- {label}: {run.status}" + (f" ({run.error})" if run.error else ""))
    if metrics:
        notes.append(f"Columns {', '.join(metrics)}: the final evaluation's values; the first row holds "
                     f"them at iteration 0 (the base model every run starts from).")
        teacher = {m: rows[0].cell([final_metric(r, f"teacher_{m}") for r in rows[0].done])[0] for m in metrics}
        teacher = {m: v for m, v in teacher.items() if not math.isnan(v)}
        if teacher:
            notes.append("The teacher's own samples (eval.teacher_steps) against the data: " +
                         ", ".join(f"{m} {v:.3f}" for m, v in teacher.items()) + ".")
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


def log_to_wandb(header: list[str], cells: list[list[str]], out_dir: Path, name: str, project: str) -> None:
    """The table as a wandb.Table and the plots as images, in a run `<sweep>/report` of the
    sweep's group (offline unless WANDB_MODE says otherwise)."""
    import os

    import wandb

    run = wandb.init(project=project, name=f"{name}/report", group=name, job_type="report",
                     mode=os.environ.get("WANDB_MODE", "offline"), dir=str(out_dir), reinit="finish_previous")
    run.log({"report/table": wandb.Table(columns=header, data=cells),
             **{f"report/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}})
    run.finish()


@one_line_errors("rlzoo report")
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


if __name__ == "__main__":
    main()
