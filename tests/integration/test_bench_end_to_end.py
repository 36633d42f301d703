"""The benchmark's machinery (its numbers are measured by `make bench`, never asserted here)."""
import pytest

from rlzoo.commands.bench import measure, table

TINY = ["task=toy2d", "train.batch_size=16", "train.group_size=4", "train.micro_batch_size=8",
        "eval.samples=16", "eval.num_steps=2"]


def test_a_bench_cell_measures_one_estimator():
    row = measure(["estimator=trajectory", "sampler=flow_sde", "sampler.num_steps=5", *TINY], 1)
    assert row["estimator"] == "trajectory" and row["steps"] == 5
    assert row["terms"] == 2 * 4  # two micro-batches x the trained steps int(0.99 * 5) = 4
    # rollout 16 x 5, then per term and row: current forward + backward (no KL: no reference;
    # old log-probs recorded by the rollout: no old forward)
    assert row["nfe_per_iteration"] == 16 * 5 + 16 * 4 * 2
    assert row["s_per_iteration"] > 0 and row["peak_bytes"] >= row["setup_bytes"] > 0
    line = table([row]).splitlines()[-1]
    assert line.startswith("| trajectory | flow_sde | 5 | 4 | 208 |")


@pytest.mark.parametrize("recipe", ["paper_a", "flowgrpo"])
def test_the_bare_loop_makes_the_same_model_passes_as_rlzoo(recipe):
    """rlzoo.commands.bare_loop (plain torch) against the trainer on the same recipe: the same rows through
    the network with and without gradients in an iteration, so the bench compares like with like."""
    from rlzoo.commands.bench import bare_table, compare_with_bare_loop

    row = compare_with_bare_loop(recipe, 1, ["train.batch_size=16", "train.group_size=8", "sampler.num_steps=4",
                                             "threads=1"])
    assert row["rlzoo_rows_no_grad"] == row["bare_rows_no_grad"] > 0
    assert row["rlzoo_rows_grad"] == row["bare_rows_grad"] > 0
    assert all(row[f"{side}_{phase}_s"] > 0 for side in ("rlzoo", "bare") for phase in ("rollout", "reward", "train"))
    assert f"| {recipe} | **iteration** |" in bare_table([row])


@pytest.mark.slow  # (its parts run in make test: the bare-loop and bench tests above)
@pytest.mark.parametrize("model", ["sd3_tiny", "flux_tiny", "z_image_tiny"])
def test_the_gpu_bench_runs_here_on_the_tiny_model(tmp_path, model):
    """`python -m rlzoo.commands.bench --gpu [--model flux_random]`'s measurement, on the CPU with each
    family's tiny model: the code path a lent GPU runs, with its FLOP count."""
    from rlzoo.commands.bench import gpu_measure, gpu_table

    row = gpu_measure(False, 1, ["device=cpu", f"task.embedding_cache={tmp_path}"], model=model)
    assert row["s_per_iteration"] > 0 and row["images_per_s"] > 0 and row["flops_per_iteration"] > 0
    assert gpu_table([row]).splitlines()[-1].startswith("| eager |")


def test_the_command_is_timed_as_users_run_it_with_the_trainers_work():
    """`make bench`'s command benchmark: rlzoo-train in its own process, seconds per iteration from
    its records' time stamps, split into the trainer's phases and the rest; the same model
    evaluations per iteration as the in-process trainer makes."""
    from rlzoo.commands.bench import command_table, compare_with_bare_loop, time_command

    small = ["train.batch_size=16", "train.group_size=8", "sampler.num_steps=4", "threads=1"]
    row = time_command("paper_a", 1, 2, small)
    inside = compare_with_bare_loop("paper_a", 1, small)
    assert row["nfe_per_iteration"] == inside["rlzoo_nfe_per_iteration"] == 16 * 4 + 16 * 3 * 4
    phases = sum(row[f"command_{p}_s"] for p in ("rollout", "reward", "train"))
    assert 0 < phases < row["command_s"] and row["command_outside_s"] == row["command_s"] - phases - row["command_critic_s"]
    assert row["startup_s"] > 0 and row["end_s"] > 0
    line = command_table([{**row, **inside, "round": 0}]).splitlines()[-1]
    assert line.startswith("| paper_a | 1 | 256 |") and line.count("|") == 15
