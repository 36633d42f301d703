"""Ablation tables: one row per varying choice, mean ± 95% t interval over seeds, the difference
to a baseline row and compute ratios; Markdown, CSV and LaTeX."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlzoo.report.runs import Run, kaplan_meier_median, varying_keys
from rlzoo.stats import mean_ci, ratio_ci


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
               baseline: dict[str, str] | None, metrics: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the ablation table (strings, shared by md / csv / tex). `metrics`: more
    evaluation metrics as columns (final values), and a first row with their values at iteration
    0 — the base model, which every row starts from (the first row's runs)."""
    if metrics and not keys:  # one row: name it, so the iteration-0 row can be told apart
        keys = ["row"]
        rows = [Row({"row": "all runs"}, row.runs) for row in rows]
    header = [*keys, "final", *metrics, "best", "KL to ref", "compute (NFE)"]
    differences = list(metrics) if baseline else []  # Δ metric vs the baseline row, mean ± 95% CI
    header += [f"Δ{m} vs " + ",".join(f"{k}={v}" for k, v in (baseline or {}).items()) for m in differences]
    if threshold is not None:
        header += [f"NFE to {threshold:g}", "reached"]
        if baseline:
            header.append("NFE ratio vs " + ",".join(f"{k}={v}" for k, v in baseline.items()))
    header += ["seeds", "failed"]
    timed = any(r.stopped_by_time for row in rows for r in row.done)
    if timed:  # (only then: a table of runs that reached their budgets keeps its columns)
        header.append("stopped by time (not comparable)")
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
        cells.append(line + [str(len(first)), "0"] + (["-"] if timed else []))
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
        if timed:
            line.append(", ".join(f"seed {r.seed}" for r in done if r.stopped_by_time) or "0")
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


def runs_csv(runs: list[Run]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = sorted({k for r in runs for k in r.overrides})
    writer.writerow(["run_dir", *keys, "status", "final", "best", "kl", "nfe", "error"])
    for r in runs:
        writer.writerow([r.path.name, *[r.overrides.get(k, "") for k in keys], r.status,
                         r.final, r.best, r.kl, r.nfe, r.error or ""])
    return out.getvalue()
