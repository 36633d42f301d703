"""Bad input fails before compute with one line naming the value and the valid choices, and an
existing run directory is left exactly as it was."""
import subprocess
import sys

import pytest
from common import REPO, snapshot
from omegaconf import OmegaConf

from rlzoo.commands.train import main


def fails(capsys, run_dir, *overrides) -> str:
    before = snapshot(run_dir)
    with pytest.raises(SystemExit) as exc:
        main(["task=toy2d", f"run_dir={run_dir}", *overrides])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert snapshot(run_dir) == before
    return err


def test_unknown_component(capsys, run_dir):
    err = fails(capsys, run_dir, "objective=ppo")
    assert "unknown objective 'ppo'" in err and "epg" in err and "pepg" in err and "grpo" in err


def test_unknown_task(capsys, run_dir):
    err = fails(capsys, run_dir, "sampler=heun")
    assert "unknown sampler 'heun'" in err and "dpm2" in err and "euler" in err


def test_group_size_must_divide_batch(capsys, run_dir):
    err = fails(capsys, run_dir, "train.batch_size=64", "train.group_size=6")
    assert "train.group_size=6 does not divide train.batch_size=64" in err
    assert "1, 2, 4, 8, 16, 32, 64" in err


def test_missing_base_checkpoint(capsys, run_dir, tmp_path):
    err = fails(capsys, run_dir, f"model.checkpoint={tmp_path}/nowhere.pt")
    assert "nowhere.pt" in err and "not found" in err and "rlzoo-pretrain task=toy2d" in err


def test_corrupt_base_checkpoint(capsys, run_dir, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    err = fails(capsys, run_dir, f"model.checkpoint={bad}")
    assert "bad.pt" in err and "corrupt" in err


@pytest.mark.parametrize("override,key", [
    ("train.iterations=0", "train.iterations"),
    ("sampler.num_steps=-3", "sampler.num_steps"),
    ("eval.num_steps=0", "eval.num_steps"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.5", "optimizer.lr"),
    ("train.batch_size=0", "train.batch_size"),
])
def test_non_positive_values(capsys, run_dir, override, key):
    err = fails(capsys, run_dir, override)
    assert f"{key} must be a" in err and ("> 0" in err or ">= 1" in err) and override.split("=")[1] in err


def test_trajectory_estimator_needs_a_stochastic_sampler(capsys, run_dir):
    err = fails(capsys, run_dir, "estimator=trajectory", "sampler=dpm2")
    assert "estimator=trajectory" in err and "sampler=dpm2" in err
    assert "flow_sde" in err and "estimator=elbo" in err


@pytest.mark.parametrize("objective", ["nft", "awm"])
def test_velocity_objectives_need_the_elbo_estimator(capsys, run_dir, objective):
    err = fails(capsys, run_dir, f"objective={objective}", "estimator=trajectory", "sampler=flow_sde")
    assert f"objective={objective}" in err and "estimator=trajectory" in err and "estimator=elbo" in err


def test_a_run_dir_with_another_config_is_not_reused(capsys, run_dir):
    from omegaconf import OmegaConf

    from rlzoo.config import compose_config

    other = compose_config(["task=toy2d", f"run_dir={run_dir}", "optimizer.lr=0.5"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(other, resolve=True))
    err = fails(capsys, run_dir)
    assert "different config (differs in optimizer.lr)" in err


def test_help_lists_choices_without_heavy_imports():
    code = ("import sys; from rlzoo.commands.train import main; main(['--help']); "
            "heavy = [m for m in ('torch', 'diffusers', 'wandb', 'hydra') if m in sys.modules]; "
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for line in ("objective", "estimator", "sampler"):
        assert line in out.stdout
    assert "epg" in out.stdout and "dpm2" in out.stdout and "elbo" in out.stdout


def test_valid_grid_follows_the_rules():
    from rlzoo.config import available, valid_grid

    grid = set(valid_grid())
    objectives, samplers = available("objective"), available("sampler")
    ode = {"euler", "dpm2", "dpm2s"}
    for o in objectives:
        for s in samplers:
            distillation = o in ("dmd", "dmdr")  # backward simulation through an ODE student
            assert ((o, "elbo", s) in grid) == (s in ode or not distillation), (o, s)
            expected = s not in ode and o not in ("nft", "awm", "dmd", "dmdr")
            assert ((o, "trajectory", s) in grid) == expected, (o, s)


@pytest.mark.parametrize("objective", ["epg", "pepg", "par", "grpo", "awm"])
def test_ratio_objectives_need_an_old_policy_or_several_updates(capsys, run_dir, objective):
    err = fails(capsys, run_dir, f"objective={objective}", "train.old_policy_schedule=0")
    assert f"objective={objective}" in err and "train.old_policy_schedule=0" in err
    assert "train.inner_epochs>1" in err and "always 1" in err
    if objective in ("epg", "pepg", "par"):
        assert f"objective={objective}_noratio" in err


def test_dmdr_with_a_ratio_objective_follows_the_same_rule(capsys, run_dir):
    """The rule is the objective's own (check_run), so DMDR's policy-gradient part answers to it."""
    err = fails(capsys, run_dir, "experiment=dmdr", "train.minibatches=1",
                "objective.policy_gradient._target_=rlzoo.objectives.EPG")
    assert "objective=dmdr uses the ratio to the old policy" in err and "always 1" in err


@pytest.mark.parametrize("overrides", [
    ["objective=epg_noratio", "train.old_policy_schedule=0"],
    ["objective=epg", "train.old_policy_schedule=0", "train.inner_epochs=2"],
    ["objective=grpo", "train.old_policy_schedule=0", "train.minibatches=2"],
])
def test_ratio_rule_allows_what_works(overrides):
    from rlzoo.config import compose_config, validate

    validate(compose_config(["task=toy2d", *overrides]))


def test_minibatches_must_divide_the_groups(capsys, run_dir):
    err = fails(capsys, run_dir, "train.batch_size=64", "train.group_size=16", "train.minibatches=3")
    assert "train.minibatches=3" in err and "4 prompt groups" in err and "valid: 1, 2, 4" in err


@pytest.mark.parametrize("window", ["[0,11]", "[3,3]", "[-1,2]"])
def test_mixed_window_inside_the_schedule(capsys, run_dir, window):
    err = fails(capsys, run_dir, "sampler=mixed", "estimator=trajectory", "kl=sde_mean",
                f"sampler.window={window}")
    assert "sampler=mixed: sampler.window=" in err and "0 <= start < end <= 10" in err


@pytest.mark.parametrize("window", ["sampler.window_size=6", "sampler.window_range=[8,12]"])
def test_drawn_window_inside_the_schedule(capsys, run_dir, window):
    err = fails(capsys, run_dir, "experiment=flowgrpo_fast", window)
    assert "sampler=mixed: sampler.window_size=" in err and "does not fit the 10-step schedule" in err


def test_a_key_the_component_does_not_take(capsys, run_dir):
    err = fails(capsys, run_dir, "estimator=trajectory", "sampler=flow_sde", "+estimator.weighting=adaptive")
    assert "estimator=trajectory takes no argument 'weighting'" in err and "its arguments: steps" in err


def test_a_run_dir_accepts_a_raised_budget_from_another_sweep(run_dir):
    """Budgets and the sweep's name do not change what a run computes, so a run copied into a
    sweep with a larger budget resumes there; any other difference still stops it."""
    import torch
    from omegaconf import OmegaConf

    from rlzoo.config import ConfigError, check_run_dir, compose_config, run_fingerprint

    saved = compose_config(["task=toy2d", f"run_dir={run_dir}", "train.max_nfe=1000", "sweep_name=short"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(saved, resolve=True))
    torch.save({"run": run_fingerprint(saved)}, run_dir / "checkpoints" / "last.pt")  # the checkpoint's record
    check_run_dir(compose_config(["task=toy2d", f"run_dir={run_dir}", "train.max_nfe=4000",
                                  "sweep_name=long"]), run_dir)
    with pytest.raises(ConfigError, match=r"differs in seed\)"):
        check_run_dir(compose_config(["task=toy2d", f"run_dir={run_dir}", "train.max_nfe=4000",
                                      "sweep_name=long", "seed=1"]), run_dir)


def test_sde_mean_kl_needs_the_trajectory_estimator(capsys, run_dir):
    """Used to pass validation and die with KeyError: 'mean' after the base evaluation."""
    err = fails(capsys, run_dir, "kl=sde_mean", "estimator=elbo")
    assert "kl=sde_mean" in err and "estimator=elbo" in err and "kl=velocity" in err


def test_a_component_argument_is_checked_before_anything_is_written(capsys, run_dir):
    """Used to fail after config.yaml was written, so the corrected rerun was refused."""
    err = fails(capsys, run_dir, "estimator.weighting=bogus")
    assert "estimator=elbo" in err and "'bogus'" in err and "adaptive, t, uniform, exact" in err
    assert not (run_dir / "config.yaml").exists()


def test_a_misspelt_key_is_one_line(capsys, run_dir):
    """Used to print Hydra's traceback."""
    err = fails(capsys, run_dir, "train.lr_typo=1")
    assert "unknown key 'train.lr_typo'" in err and "max_grad_norm," in err and "+train.lr_typo=" not in err


@pytest.mark.parametrize("override,expected,not_expected", [
    # a real key under another node (the trap: `+train.lr` used to train with lr unchanged)
    ("train.lr=1e-4", "did you mean optimizer.lr?", "+train.lr"),
    ("trian.iterations=3", "'trian' is not a key of the config", "+trian"),
    ("eval.seeed=3", "did you mean eval.seed?", "+eval.seeed"),
    # an optional key (read when present): the + is offered
    ("eval.shift=2", "write +eval.shift=...", "did you mean"),
])
def test_an_unknown_key_points_to_the_nearest_real_one(capsys, run_dir, override, expected, not_expected):
    err = fails(capsys, run_dir, override)
    assert expected in err and not_expected not in err, err


@pytest.mark.parametrize("override", ["+train.lr=1e-4", "++train.lr=1e-4", "+foo=1", "+eval.seeed=3", "+model.foo=1",
                                      "+critic.foo=1"])
def test_an_added_key_that_nothing_reads_is_refused(capsys, run_dir, override):
    """(+model.foo used to fail after the run directory was written; ++ and +critic.foo were accepted and ignored)"""
    err = fails(capsys, run_dir, override)
    assert f"+{override.lstrip('+').split('=')[0]}: nothing in rlzoo reads" in err
    if override.startswith("+train.lr"):
        assert "did you mean optimizer.lr?" in err


@pytest.mark.parametrize("override", ["+eval.shift=2", "+task.eval_rewards.verifier={_target_: rlzoo.rewards.VerifierReward}"])
def test_an_added_key_that_is_read_composes(override):
    from rlzoo.config import compose_config

    cfg = compose_config(["task=shapes", override])
    assert OmegaConf.select(cfg, override[1:].split("=")[0]) is not None


@pytest.mark.parametrize("objective", ["nft", "awm"])
def test_velocity_objectives_need_shared_noise(capsys, run_dir, objective):
    err = fails(capsys, run_dir, f"objective={objective}", "estimator.shared_noise=false")
    assert f"objective={objective}" in err and "estimator.shared_noise=true" in err


def test_sde_mean_normalizer_is_checked(capsys, run_dir):
    err = fails(capsys, run_dir, "experiment=flowgrpo", "kl.normalizer=full")
    assert "kl=sde_mean" in err and "'full'" in err and "step, kernel" in err


def test_needs_are_checked_generically(capsys, run_dir, monkeypatch):
    """A component whose declared needs its provider does not provide is refused by the one
    generic rule, with no pair rule written for it."""
    monkeypatch.syspath_prepend(str(REPO / "tests" / "helpers"))
    err = fails(capsys, run_dir, "objective._target_=needy_components.NeedsMean")
    assert "needs mean from estimator=elbo, which does not provide it" in err and "estimator=trajectory" in err


def test_a_declaration_outside_the_vocabulary_is_refused(capsys, run_dir, monkeypatch):
    """needs = {"score"}: no LikelihoodTerm has that field, so no estimator ever could provide it."""
    monkeypatch.syspath_prepend(str(REPO / "tests" / "helpers"))
    err = fails(capsys, run_dir, "objective._target_=needy_components.NeedsScore")
    assert "declares needs ['score'], which are not fields" in err and "velocity_ref" in err


def test_combination_error_reads_the_declarations():
    from types import SimpleNamespace as C

    from rlzoo.config import combination_error

    names = {"sampler": "s", "estimator": "e", "objective": "o", "kl": "k"}
    fine = {"sampler": C(needs=set(), provides={"trajectory"}),
            "estimator": C(needs={"trajectory"}, provides={"mean", "x0"}),
            "objective": C(needs={"x0"}, sampler_needs=set()), "kl": C(needs={"mean"})}
    assert combination_error(fine, names) is None
    for consumer, broken in (("estimator", {**fine, "sampler": C(needs=set(), provides=set())}),
                             ("objective", {**fine, "objective": C(needs={"x0", "velocity"}, sampler_needs=set())}),
                             ("kl", {**fine, "kl": C(needs={"mean_ref"})})):
        error = combination_error(broken, names)
        assert error.startswith(f"{consumer}={names[consumer]} needs "), error


@pytest.mark.parametrize("overrides,needed", [
    (["estimator=trajectory", "sampler=dpm2"], "trajectory"),
    (["objective=nft", "estimator=trajectory", "sampler=flow_sde"], "velocity_old, x0"),
    (["kl=sde_mean", "estimator=elbo"], "mean, mean_ref, std"),
    (["objective=awm", "estimator.shared_noise=false"], "velocity_old"),
])
def test_the_old_pair_rules_are_needs(capsys, run_dir, overrides, needed):
    err = fails(capsys, run_dir, *overrides)
    assert f"needs {needed} from" in err


def test_lora_without_targets_names_the_missing_key(capsys, run_dir):
    """The target list has no Python default (conf/shared/lora.yaml is the one list): a model.lora
    without it is one line naming the key."""
    err = fails(capsys, run_dir, "+model.lora={rank:4,alpha:8}")
    assert "model.lora.target_modules is missing" in err and "conf/shared/lora.yaml" in err


@pytest.mark.parametrize("device,message", [("cuda", "has no CUDA GPU"), ("cuda:3", "has no CUDA GPU"),
                                            ("gpu", "is not a device; valid: cpu, cuda")])
def test_a_device_this_machine_lacks_is_one_line(capsys, run_dir, device, message):
    """(on this CPU machine; it used to fail after the run directory was written, with a traceback)"""
    err = fails(capsys, run_dir, f"device={device}")
    assert message in err, err


def test_an_optional_key_is_checked_like_the_others(capsys, run_dir):
    err = fails(capsys, run_dir, "+eval.shift=-1")
    assert "eval.shift must be a finite number > 0, got -1" in err


def test_a_run_recorded_with_component_seeds_resumes_when_they_followed_its_seed():
    """Runs recorded before the run's randomness was one object name critic.seed, reward.seed and
    objective.seed (all ${seed}): equal to the run's seed they are not a difference; set apart,
    the run drew otherwise and is refused."""
    from rlzoo.config import compose_config, config_differences, run_fingerprint

    new = run_fingerprint(compose_config(["task=toy2d", "experiment=gndmr"]))
    old = {**new, "critic": {**new["critic"], "seed": 0}, "objective": {**new["objective"], "seed": 0},
           "reward": {**new["reward"], "rewards": {**new["reward"]["rewards"],
                                                   "dm": {**new["reward"]["rewards"]["dm"], "seed": 0}}}}
    assert config_differences(old, new) == []
    assert config_differences({**old, "critic": {**old["critic"], "seed": 3}}, new) == ["critic.seed"]


def test_an_old_checkpoints_streams_are_read_into_the_runs_randomness():
    import torch

    from rlzoo.runs.checkpointer import upgrade

    g = {name: torch.Generator().manual_seed(i).get_state() for i, name in enumerate(("run", "dm", "dmd", "critic"))}
    old = {"generator": g["run"], "reward": {"parts": {"dm": {"generator": g["dm"]}, "verifier": {}}},
           "objective": {"generator": g["dmd"]}, "learners": {"critic": {"optimizer": {}, "generator": g["critic"]}}}
    rng = upgrade(old)["rng"]
    assert set(rng) == {"run", "reward", "objective", "critic"}
    assert all(torch.equal(rng[a], g[b]) for a, b in (("run", "run"), ("reward", "dm"), ("objective", "dmd"),
                                                      ("critic", "critic")))
    assert upgrade({"rng": {}, "generator": g["run"]}) == {"rng": {}, "generator": g["run"]}  # (today's: as it is)


def test_a_run_recorded_before_paper_b_moved_names_its_components_where_they_are_now():
    """Paper B's components moved into rlzoo.distribution_matching; a run recorded before names
    them by their old paths (the committed paper_b_toy2d runs do) and still resumes and evaluates."""
    from common import REPO

    from rlzoo.config import compose_config, config_differences, load_untrusted_config, run_fingerprint

    new = run_fingerprint(compose_config(["task=toy2d", "experiment=gndmr"]))
    old = {**new, "critic": {**new["critic"], "_target_": "rlzoo.critic.Critic"},
           "reward": {**new["reward"], "rewards": {**new["reward"]["rewards"], "dm": {
               **new["reward"]["rewards"]["dm"], "_target_": "rlzoo.rewards.distribution.DistributionMatchingReward"}}}}
    assert config_differences(old, new) == []
    recorded = REPO / "experiments/results/paper_b_toy2d/experiment=gndmr,seed=0/config.yaml"
    assert "rlzoo.critic.Critic" in recorded.read_text()
    cfg = load_untrusted_config(recorded)
    assert cfg.critic._target_ == "rlzoo.distribution_matching.critic.Critic"
    assert cfg.reward.rewards.dm._target_ == "rlzoo.distribution_matching.reward.DistributionMatchingReward"


@pytest.mark.parametrize("recipe", ["paper_a", "dmd"])
def test_a_family_run_recorded_with_the_static_shifts_it_never_read_resumes(recipe):
    """FLUX.1 and Z-Image runs recorded before sampler.shift became null beside a family's own
    schedule hold sampler.shift 3.0 (and a student's 1.0): never read, so not a difference; a
    changed schedule still is; on SD3 the shift is read and a change is one."""
    from rlzoo.config import compose_config, config_differences, run_fingerprint

    new = run_fingerprint(compose_config(["task=t2i", "model=flux_tiny", f"experiment={recipe}"]))
    assert new["sampler"]["shift"] is None
    old = {**new, "sampler": {**new["sampler"], "shift": 3.0}}
    if "student" in new:
        old["student"] = {**new["student"], "shift": 1.0}
    assert config_differences(old, new) == []
    moved = {**old, "sampler": {**old["sampler"], "schedule": {"image_seq_len": 256}}}
    assert config_differences(moved, new) == ["sampler.schedule.image_seq_len"]
    sd3 = run_fingerprint(compose_config(["task=t2i", "model=sd3_tiny", "experiment=paper_a"]))
    assert config_differences({**sd3, "sampler": {**sd3["sampler"], "shift": 1.0}}, sd3) == ["sampler.shift"]


@pytest.mark.parametrize("reward", ["pickscore", "mix"])
def test_a_run_with_a_seeded_tiny_reward_resumes_as_it_was(reward):
    """A reward's own seed (its tiny random weights: reward.seed 0, a mix's parts) equal to the
    run's is no difference from itself: resuming the same t2i command is not refused."""
    from rlzoo.config import compose_config, config_differences, run_fingerprint

    cfg = run_fingerprint(compose_config(["task=t2i", "model=sd3_tiny", f"reward={reward}", "reward.tiny=true"]))
    assert config_differences(cfg, cfg) == []
    assert "seed" in config_differences(cfg, {**cfg, "seed": 1})
