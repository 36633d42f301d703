"""init_from: a new run starts from another run's weights (a run directory, a LoRA directory, an
exported directory); its first evaluation measures exactly the weights the parent's last one did."""
import json

import pytest
from common import records, rlzoo_train_here, tiny

T2I = ["task=t2i", "model=sd3_tiny", "reward=pickscore", "reward.tiny=true", "debug=tiny", "threads=1"]
SHAPES = tiny(task="shapes")


def train(run_dir, *overrides):
    out = rlzoo_train_here(*overrides, f"run_dir={run_dir}")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads((run_dir / "summary.json").read_text())


def assert_starts_where_the_parent_ended(parent, child, kind):
    """The child's first evaluation (same protocol, same noise) equals the parent's last, and
    config.yaml and summary.json name the parent."""
    last, first = records(parent / "eval.jsonl")[-1], records(child / "eval.jsonl")[0]
    assert first["iteration"] == 0
    scores = [k for k, v in last.items() if isinstance(v, float) and not k.startswith(("wall", "nfe"))]
    assert scores and all(first[k] == last[k] for k in scores), (first, last)
    summary = json.loads((child / "summary.json").read_text())
    assert summary["init_from"]["kind"] == kind and summary["init_from"]["iterations"] == 2
    assert "init_from:" in (child / "config.yaml").read_text()


@pytest.mark.parametrize("kind", ["lora", pytest.param("run", marks=pytest.mark.slow)])  # (a run dir: shapes below)
def test_a_lora_run_starts_from_its_lora_or_its_run_directory(tmp_path, kind):
    cache = f"task.embedding_cache={tmp_path / 'cache'}"
    train(tmp_path / "parent", *T2I, cache)
    source = tmp_path / "parent" / "lora" if kind == "lora" else tmp_path / "parent"
    train(tmp_path / "child", *T2I, cache, f"init_from={source}")
    assert_starts_where_the_parent_ended(tmp_path / "parent", tmp_path / "child", kind)


@pytest.mark.slow  # (make test: the LoRA warm start, and warm starts in tests/faults/test_first_day.py)
def test_a_full_fine_tuning_run_starts_from_a_run_directory_and_an_export(tmp_path):
    from rlzoo.commands.export import export

    train(tmp_path / "parent", *SHAPES)
    export(tmp_path / "parent", tmp_path / "exported")
    for source, kind in ((tmp_path / "parent", "run"), (tmp_path / "exported", "exported")):
        child = tmp_path / f"child_{kind}"
        train(child, *SHAPES, f"init_from={source}")
        assert_starts_where_the_parent_ended(tmp_path / "parent", child, kind)
