"""The fault suite, area 2: a run directory's files are data, never code (`_target_` in config.yaml, config.json).
Each case asserts its outcome (one line, the exit code) and that no file that existed before
changed (tests/README.md lists the areas)."""
import json
import sys
from pathlib import Path

import pytest
from common import HELPERS, cli, snapshot


def craft(run: Path, victim: Path, where: str) -> None:
    """Point a `_target_` of the run's config.yaml at builtins.open(victim, "w"), which truncates it."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    OmegaConf.update(cfg, where, {"_target_": "builtins.open", "file": str(victim), "mode": "w"}, merge=False)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


@pytest.mark.parametrize("where", ["task", "model", "reward", "sampler", "critic", "logger",
                                   "task.eval_rewards.extra", "reward.rewards.0"])
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_harmful_target_in_a_run_directory_never_runs(capsys, run, tmp_path, where, command):
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive")
    craft(run, victim, where)
    before = snapshot(run)
    argv = ["evaluate", f"run_dir={run}"] if command == "evaluate" else \
        ["export", f"run_dir={run}", "--out", str(tmp_path / "out")]
    code, err = cli(capsys, *argv)
    assert code == 2 and "builtins.open" in err and "not one of rlzoo's components" in err
    assert victim.read_text() == "must survive" and snapshot(run) == before
    assert not (tmp_path / "out").exists()


def test_an_interpolation_in_a_run_config_is_refused(capsys, run):
    text = (run / "config.yaml").read_text().replace("name: toy2d", "name: ${oc.env:HOME}", 1)
    (run / "config.yaml").write_text(text)
    code, err = cli(capsys, "evaluate", f"run_dir={run}")
    assert code == 2 and "interpolation" in err


def test_a_user_named_target_on_the_command_line_is_trusted(capsys, run):
    """The user's own component, named by the user (not by the run's files), may run."""
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("_target_: rlzoo.rewards.VerifierReward",
                                                  "_target_: faulty_rewards.NaNReward"))
    code, err = cli(capsys, "evaluate", f"run_dir={run}")
    assert code == 2 and "faulty_rewards.NaNReward" in err
    sys.path.insert(0, str(HELPERS))
    try:
        code, _ = cli(capsys, "evaluate", f"run_dir={run}", "reward._target_=faulty_rewards.NaNReward",
                      "eval.samples=24")
    finally:
        sys.path.remove(str(HELPERS))
    assert code == 0


@pytest.mark.parametrize("content, message", [
    ("{not: [yaml", "is not YAML"),
    ("- a list\n- not a config\n", "not a config"),
])
def test_a_damaged_run_config_is_one_line(capsys, run, content, message):
    (run / "config.yaml").write_text(content)
    before = snapshot(run)
    code, err = cli(capsys, "evaluate", f"run_dir={run}")
    assert code == 2 and message in err and snapshot(run) == before


@pytest.mark.parametrize("override, message", [
    ("eval.sampels=10", "unknown key 'eval.sampels'"),
    ("+eval.extra=1", "must be key=value for a key the run's config has"),
    ("weights=best", "unknown weights='best'"),
])
def test_evaluate_refuses_unknown_keys(capsys, run, override, message):
    before = snapshot(run)
    code, err = cli(capsys, "evaluate", f"run_dir={run}", override)
    assert code == 2 and message in err and snapshot(run) == before


def test_evaluate_validates_the_values_it_is_given(capsys, run):
    code, err = cli(capsys, "evaluate", f"run_dir={run}", "eval.samples=0")
    assert code == 2 and "eval.samples must be an int >= 1" in err


def test_an_exported_config_json_is_checked_before_it_builds(run, tmp_path, capsys):
    from rlzoo.commands.export import load_model
    from rlzoo.config import ConfigError

    out = tmp_path / "exported"
    assert cli(capsys, "export", f"run_dir={run}", "--out", str(out))[0] == 0
    model = load_model(out)
    assert sum(p.numel() for p in model.parameters()) > 0
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive")
    config = json.loads((out / "config.json").read_text())
    config["model"] = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="not one of rlzoo's components"):
        load_model(out)
    assert victim.read_text() == "must survive"


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "is not a directory"),
    (lambda d: d.mkdir(), "holds no run"),
])
def test_evaluate_names_what_a_run_directory_lacks(capsys, tmp_path, make, message):
    target = tmp_path / "nothing"
    make(target)
    code, err = cli(capsys, "evaluate", f"run_dir={target}")
    assert code == 2 and message in err
