"""The fault suite, continued (README, Reliability, Runs): where runs and sweeps write. A value
becomes one path component whatever it holds, a sweep whose jobs would share a run directory is
refused before any job, sweep_name stays under multirun/, runs that differ in any choice get
directories of their own, and debug=tiny shrinks a named sweep into a folder of its own."""
import json
from pathlib import Path

import pytest
from common import TINY, cli, one_line, snapshot, tiny, train_here

from rlzoo.commands.sweeps import adhoc_sweep_name, sweep_dir, validate_sweep
from rlzoo.config import ConfigError, compose_config, path_component, run_variant


@pytest.fixture
def sweep(capsys, tmp_path, monkeypatch):
    """A tiny toy2d sweep `rlzoo-train -m ...` in this process, from tmp_path; it must end with `code`."""
    monkeypatch.chdir(tmp_path)

    def run(*argv, code=0):
        out = train_here(capsys, "-m", *tiny(*argv))
        assert out.returncode == code, out.stderr[-2000:]
        return out
    return run


# ------------------------------------------------------------------------------ sweep paths stay inside
@pytest.mark.parametrize("text, name", [("a/b", "a%2Fb"), ("..", "%2E%2E"), (".", "%2E"), ("a b", "a%20b"),
                                        ("100%", "100%25"), ("x=${reward}", "x=%24%7Breward%7D"),
                                        ("seed=0,lr=1e-3", "seed=0,lr=1e-3")])
def test_a_value_becomes_one_path_component(text, name):
    assert path_component(text) == name


def test_an_over_long_name_is_cut_and_stays_distinct():
    a, b = path_component("k=" + "x" * 400), path_component("k=" + "x" * 399 + "y")
    assert a != b and len(a.encode()) <= 200 and len(b.encode()) <= 200


def test_sweep_values_with_slashes_and_dots_stay_in_the_sweep_folder(sweep, tmp_path):
    sweep("sweep_name=odd", "name=a/b,..,a//b")
    runs = sorted(p.name for p in (tmp_path / "multirun/debug/odd").iterdir() if p.is_dir())
    assert runs == ["debug=tiny,name=..,task=toy2d", "debug=tiny,name=a%2F%2Fb,task=toy2d",
                    "debug=tiny,name=a%2Fb,task=toy2d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun"]  # nothing beside it


def test_jobs_that_would_share_a_run_directory_are_refused_before_any_job(sweep, tmp_path):
    out = sweep("sweep_name=clash", "threads=1,2", code=2)
    line = one_line(out.stderr)
    assert "sweep job" in line and "threads=2" in line and "same run directory as job" in line and "threads" in line
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "", "a b"])
def test_a_sweep_name_that_leaves_multirun_is_refused(sweep, tmp_path, name):
    out = sweep(f"sweep_name='{name}'", "seed=0,1", code=2)
    assert "must name one folder under multirun/" in one_line(out.stderr)
    assert list(tmp_path.iterdir()) == []


def test_unrelated_ad_hoc_sweeps_get_folders_of_their_own():
    one, two = ["task=toy2d", "objective=epg,pepg"], ["task=toy2d", "seed=0,1"]
    assert adhoc_sweep_name(one) != adhoc_sweep_name(two)
    assert adhoc_sweep_name(one) == adhoc_sweep_name(list(reversed(one)))  # the same command, the same folder
    assert adhoc_sweep_name([*one, "threads=1", "progress_bar=false"]) == adhoc_sweep_name(one)
    name = adhoc_sweep_name(["task=toy2d", "objective=glob(pepg*)"])
    assert path_component(name) == name  # a shell takes it unquoted


def test_debug_tiny_shrinks_a_named_sweep_into_a_folder_of_its_own():
    """`+sweep=<name> debug=tiny` is the "does it compose?" check: 2 iterations per job, not the
    sweep's budget, and not in the real sweep's folder (whose runs it would then block)."""
    for spelling in ("+sweep=smoke", "sweep=smoke"):
        cfg = compose_config([spelling, "debug=tiny"])
        assert cfg.train.iterations == 2 and cfg.eval.samples == 12 and cfg.checkpoint_every is None
        assert sweep_dir([spelling, "debug=tiny"]) == Path("multirun/debug/smoke")
    assert compose_config(["+sweep=smoke"]).train.iterations == 150
    assert sweep_dir(["+sweep=smoke"]) == Path("multirun/smoke")
    assert len(validate_sweep(["+sweep=smoke", "debug=tiny"])) == 8


# --------------------------------------------------------------------- runs that differ do not collide
def run_dir(*overrides) -> str:
    variant = run_variant(list(overrides))
    return str(compose_config([*overrides, *([f"variant='{variant}'"] if variant else [])]).run_dir)


@pytest.mark.parametrize("overrides, expected", [
    (["task=toy2d"], "runs/toy2d/epg-elbo-dpm2/seed0"),
    (["task=toy2d", "objective=pepg", "sampler=euler", "seed=1"], "runs/toy2d/pepg-elbo-euler/seed1"),
    (["task=toy2d", "reward=verifier", "kl=velocity"], "runs/toy2d/epg-elbo-dpm2/seed0"),  # the defaults, spelt out
    (["task=shapes", "reward=pickscore", "reward.tiny=true"], "runs/shapes/epg-elbo-dpm2,reward=pickscore,reward.tiny=true/seed0"),
    (["task=toy2d", "kl=none", "advantage=group"], "runs/toy2d/epg-elbo-dpm2,advantage=group,kl=none/seed0"),
    (["task=toy2d", "optimizer.lr=2e-3"], "runs/toy2d/epg-elbo-dpm2,optimizer.lr=2e-3/seed0"),
    (["task=toy2d", "train.iterations=5", "threads=1", "logger=wandb", "eval.every=3"], "runs/toy2d/epg-elbo-dpm2/seed0"),
    (["experiment=flowgrpo", "task=toy2d", "sampler=euler"], "runs/toy2d/flowgrpo,sampler=euler/seed0"),
    (["task=toy2d", "debug=tiny", "kl=none"], "runs/debug/toy2d/epg-elbo-dpm2,kl=none/seed0"),
])
def test_a_run_directory_names_every_choice_that_differs_from_the_defaults(overrides, expected):
    assert run_dir(*overrides) == expected


def test_rlzoo_train_writes_where_the_name_says_and_an_explicit_run_dir_wins(here, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from rlzoo.commands.train import main

    monkeypatch.chdir(tmp_path)
    main([*TINY, "kl=none"])
    run = tmp_path / "runs/debug/toy2d/epg-elbo-dpm2,kl=none/seed0"
    assert OmegaConf.load(run / "config.yaml").variant == ",kl=none"
    assert here(tmp_path / "mine", "kl=none").returncode == 0
    assert OmegaConf.load(tmp_path / "mine" / "config.yaml").variant == ""


def test_the_readme_own_reward_trap_no_longer_collides(tmp_path):
    """Two runs that differ only in their reward used to share runs/shapes/epg-elbo-dpm2/seed0,
    so the second was refused as "a run with a different config"."""
    assert run_dir("task=shapes") != run_dir("task=shapes", "reward=pickscore", "reward.tiny=true")


def test_a_bad_override_in_the_name_is_still_one_line():
    with pytest.raises(ConfigError, match="unknown reward 'pikscore'"):
        run_variant(["task=shapes", "reward=pikscore"])


# ------------------------------------------------------------------- a refusal writes nothing anywhere
def test_a_refused_resume_without_config_yaml_writes_nothing(here, tmp_path):
    """config.yaml gone, the checkpoint's own record says whose run it is: another config is refused
    before anything is written (.hydra/ used to be rewritten first)."""
    run = tmp_path / "run"
    assert here(run, "train.iterations=1").returncode == 0
    (run / "config.yaml").unlink()
    before = snapshot(run)
    out = here(run, "train.iterations=2", "seed=1")
    assert out.returncode == 2 and "another config" in one_line(out.stderr) and "seed" in out.stderr
    assert snapshot(run) == before


def test_a_resume_writes_a_missing_config_yaml_back(here, tmp_path, capsys):
    run = tmp_path / "run"
    assert here(run, "train.iterations=1").returncode == 0
    written = (run / "config.yaml").read_text()
    (run / "config.yaml").unlink()
    assert here(run, "train.iterations=2").returncode == 0
    assert (run / "config.yaml").read_text() == written  # the checkpoint's record of the config
    assert cli(capsys, "evaluate", f"run_dir={run}")[0] == 0


def test_a_checkpoint_that_does_not_fit_writes_no_hydra_record(run, here):
    import torch

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del state["run"]  # (as an old checkpoint) so only the model itself can refuse it
    state["policy"]["current"] = {"net.0.weight": torch.zeros(3, 3)}
    torch.save(state, run / "checkpoints" / "last.pt")
    before = snapshot(run)
    out = here(run, "train.iterations=5")
    assert out.returncode == 2 and "does not fit this run" in one_line(out.stderr)
    assert set(snapshot(run)) - set(before) <= {".rlzoo.lock"} and not (run / ".hydra").exists()


def test_init_from_into_a_directory_holding_a_run_is_refused(here, trained, tmp_path):
    run = tmp_path / "run"
    assert here(run, "train.iterations=1").returncode == 0
    before = snapshot(run)
    out = here(run, "train.iterations=2", f"init_from={trained}")
    line = one_line(out.stderr)
    assert out.returncode == 2 and "would be ignored" in line and "the base model" in line
    assert snapshot(run) == before
    warm = tmp_path / "warm"  # a warm-started run resumes with the command that started it
    assert here(warm, "train.iterations=1", f"init_from={trained}").returncode == 0
    assert here(warm, "train.iterations=2", f"init_from={trained}").returncode == 0
    out = here(warm, "train.iterations=3", f"init_from={run}")
    assert out.returncode == 2 and f"started from '{trained}'" in one_line(out.stderr)


def test_a_sweep_job_whose_directory_holds_another_run_stops_the_sweep_before_any_job(tmp_path, here, sweep):
    sweep_dir = tmp_path / "multirun" / "debug" / "held"
    held = sweep_dir / "debug=tiny,seed=1,task=toy2d"
    assert here(f"'{held}'", "seed=0").returncode == 0  # another seed's run where seed=1's goes
    out = sweep("sweep_name=held", "seed=0,1", code=2)
    line = one_line(out.stderr)
    assert "sweep job" in line and "seed=1" in line and "different config" in line
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["debug=tiny,seed=1,task=toy2d"]


def test_a_run_directory_named_with_commas_and_equals_is_taken_as_written(here, tmp_path):
    """run_dir= and init_from= take a path as written in a single run (a variant's name holds ','
    and '=', which Hydra's grammar would otherwise read)."""
    parent = tmp_path / "runs" / "toy2d" / "epg-elbo-dpm2,kl=none" / "seed0"
    assert here(parent, "kl=none").returncode == 0
    assert here(parent, "kl=none", "train.iterations=3").returncode == 0  # (resumed there)
    assert here(tmp_path / "child's run", "kl=none", f"init_from={parent}").returncode == 0
    assert json.loads((tmp_path / "child's run" / "summary.json").read_text())["init_from"]["path"] == str(parent)
