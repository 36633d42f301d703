"""Plots: held-out reward vs compute (mean and 95% band over seeds, small multiples), final reward
vs KL, and any evaluation metric vs compute."""
from __future__ import annotations

from pathlib import Path

from rlzoo.report.tables import Row
from rlzoo.runs.outputs import OutputDir


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


def _what(rows: list[Row]) -> str:
    """" (<what the reward is>)" when every run says the same (a run trained on its own reward
    reports that reward, not the task's verifier: summary.json's eval_protocol.reward); else ""."""
    said = {r.headline for row in rows for r in row.runs}
    return f" ({said.pop()})" if len(said) == 1 and None not in said else ""


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
    xlabel, ylabel = "model evaluations, forward + backward (millions)", f"held-out reward{_what(rows)}"

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
    ax.set_ylabel(f"final held-out reward{_what(rows)}")
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
