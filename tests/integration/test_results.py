"""The committed sweep results re-render to the committed tables, so the report format cannot
silently rot (experiments/results/<sweep>/: JSONL + summaries + overrides, no checkpoints)."""
from pathlib import Path

import pytest

from rlzoo.report import report

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"
SWEEPS = sorted(p.parent.parent.name for p in RESULTS.glob("*/report/table.md"))


def test_results_are_committed():
    assert {"smoke", "recipes_toy2d", "paper_a_ablation", "paper_a_flowgrpo_long"} <= set(SWEEPS)


# Reports rendered with a --baseline the sweep's runs did not carry (see their COMMAND.md).
BASELINES = {"paper_b": "experiment=dmd"}


@pytest.mark.parametrize("sweep", SWEEPS)
def test_committed_report_rerenders(tmp_path, sweep):
    committed = (RESULTS / sweep / "report" / "table.md").read_text()
    rendered = report(RESULTS / sweep, out_dir=tmp_path, baseline=BASELINES.get(sweep))
    assert rendered == committed
    for name in ("table.csv", "table.tex", "runs.csv"):
        assert (tmp_path / name).read_text() == (RESULTS / sweep / "report" / name).read_text()
    for name in ("curves.png", "reward_vs_kl.png"):
        assert (tmp_path / name).stat().st_size > 1000


# Tables of several sweeps together: output folder -> (sweeps, baseline), as in its COMMAND.md.
COMBINED = {"paper_a_flowgrpo_long/vs_paper_a_ablation":
            (["paper_a_ablation", "paper_a_flowgrpo_long"], "source=paper_a_ablation,row=epg_elbo_ode")}


@pytest.mark.parametrize("folder", sorted(COMBINED))
def test_committed_combined_report_rerenders(tmp_path, folder):
    sweeps, baseline = COMBINED[folder]
    rendered = report([RESULTS / s for s in sweeps], baseline=baseline, out_dir=tmp_path, plots=False)
    assert rendered == (RESULTS / folder / "table.md").read_text()
    for name in ("table.csv", "table.tex", "runs.csv"):
        assert (tmp_path / name).read_text() == (RESULTS / folder / name).read_text()


def test_experiments_readme_names_every_named_sweep():
    """experiments/README.md's table says what each sweep of conf/sweep/ answers (it used to list
    half of them)."""
    text = (RESULTS.parent / "README.md").read_text()
    sweeps = sorted(p.stem for p in (RESULTS.parents[1] / "conf" / "sweep").glob("*.yaml"))
    assert [s for s in sweeps if f"| `{s}` |" not in text] == []
