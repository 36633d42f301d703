"""The fault suite, continued (README, Runs): first-day traps fixed at their cause. A run trained
on a reward of its own is measured by that reward (the task's verifier beside it), and a warm
start's first evaluation is called what it is, not "base"."""
import json

import pytest
from common import cli, records

OWN = ["task=shapes", "reward=pickscore", "reward.tiny=true", "eval.samples=24", "eval.batch_size=24"]


@pytest.fixture(scope="module")
def own_reward_run(tmp_path_factory):
    from rlzoo.commands.train import main

    run = tmp_path_factory.mktemp("own") / "run"
    main(["debug=tiny", "threads=1", *OWN, f"run_dir={run}"])
    return run


def test_a_run_on_its_own_reward_heads_its_numbers_with_that_reward(own_reward_run):
    evals = records(own_reward_run / "eval.jsonl")
    summary = json.loads((own_reward_run / "summary.json").read_text())
    assert list(evals[0])[1:3] == ["reward", "verifier"]  # (after the iteration)
    assert evals[-1]["verifier"] == evals[-1]["strict"] and evals[-1]["reward"] != evals[-1]["strict"]
    assert summary["final"]["reward"] == evals[-1]["reward"] and summary["final"]["verifier"] == evals[-1]["strict"]
    assert summary["eval_protocol"]["reward"] == "the training reward (reward=pickscore)"
    metrics = records(own_reward_run / "metrics.jsonl")
    assert "reward/reward" in metrics[0]  # (the training batch's own record is unchanged)


def test_rlzoo_evaluate_measures_it_as_its_run_did(own_reward_run, capsys):
    code, _ = cli(capsys, "evaluate", f"run_dir={own_reward_run}")
    written = json.loads((own_reward_run / "evaluations" / "ema.json").read_text())["metrics"]
    last = records(own_reward_run / "eval.jsonl")[-1]
    assert code == 0 and written["reward"] == pytest.approx(last["reward"]) and written["verifier"] == last["verifier"]


def test_the_end_table_says_what_its_reward_is(here, tmp_path):
    out = here(tmp_path / "run", "task=shapes", "reward=pickscore", "reward.tiny=true", "eval.samples=24",
               "eval.batch_size=24")
    assert out.returncode == 0 and "(held-out; reward is the training reward (reward=pickscore), verifier the task's own)" \
        in out.stdout
    plain = here(tmp_path / "plain", "task=shapes", "eval.samples=24", "eval.batch_size=24")
    assert "(held-out; reward is the task's own)" in plain.stdout and "verifier" not in plain.stdout


@pytest.mark.parametrize("reward", ["verifier", "mix", "dm"])
def test_the_verifier_heads_runs_on_it_or_on_a_normalised_or_learnt_reward(reward):
    from rlzoo.config import build_components, compose_config

    components = build_components(compose_config(["task=toy2d", f"reward={reward}"]))
    assert components.task.headline_reward is None


def test_a_warm_start_calls_its_first_column_start_not_base(here, trained, tmp_path):
    out = here(tmp_path / "warm", f"init_from={trained}")
    header = next(line for line in out.stdout.splitlines() if line.startswith("metric"))
    assert out.returncode == 0 and header.split()[1] == "start"
    assert "before.png (the weights it started from)" in out.stdout and "(base model)" not in out.stdout


def test_an_export_of_another_run_does_not_silently_replace_an_earlier_one(capsys, trained, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    out = tmp_path / "exported"
    assert cli(capsys, "export", f"run_dir={trained}", "--out", str(out))[0] == 0
    assert cli(capsys, "export", f"run_dir={trained}", "--out", str(out))[0] == 0  # (the same run again: fine)
    before = (out / "config.json").read_text()
    code, line = cli(capsys, "export", f"run_dir={other}", "--out", str(out))
    assert code == 2 and "holds the export of another run" in line and str(trained) in line
    assert (out / "config.json").read_text() == before
    assert cli(capsys, "export", f"run_dir={other}", "--out", str(out), "--overwrite")[0] == 0
    assert json.loads((out / "config.json").read_text())["run_dir"] == str(other)


def test_replacing_a_mix_s_part_says_how_instead_of_contradicting_itself():
    """README's GNDMR-on-t2i command merged a dict into the verifier part there ("'external' is not
    a key ...; valid: dm, external"); the error now says how to put another component there."""
    from rlzoo.config import ConfigError, compose_config

    with pytest.raises(ConfigError, match=r"merges into the reward.rewards.external that is there, which has no "
                                          r"key 'path'; .*'~reward.rewards.external' '\+reward.rewards.external="):
        compose_config(["experiment=gndmr", "task=t2i",
                        "reward.rewards.external={_target_: rlzoo.rewards.images.CLIPReward, path: /data/x}"])
    cfg = compose_config(["experiment=gndmr", "task=t2i", "~reward.rewards.external",
                          "+reward.rewards.external={_target_: rlzoo.rewards.images.CLIPReward, path: /data/x}"])
    assert cfg.reward.rewards.external.path == "/data/x"
