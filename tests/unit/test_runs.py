"""Compute as the estimators count it, against hand counts, and the optimizer and lr schedule as
components (tests/integration/test_runs_end_to_end.py: checkpoints, evaluate, export)."""

import pytest
import torch


def test_elbo_compute_with_two_noise_draws_is_the_hand_count(tiny_trainer):
    """debug=tiny: batch 8, 3 sampler steps -> int(0.99 * 3) = 2 ELBO terms per sample. Per term
    and noise draw: current + old + reference forwards, one backward; 2 draws."""
    t = tiny_trainer("estimator=elbo", "sampler=euler", "estimator.noise_draws=2", "kl=velocity")
    t.train_step()
    rollout, terms, draws = 8 * 3, 2, 2
    assert t.progress.compute.nfe_forward == rollout + 8 * terms * draws * 3
    assert t.progress.compute.nfe_backward == 8 * terms * draws


def test_trajectory_compute_is_the_hand_count(tiny_trainer):
    """flow_sde, 3 steps, every step stochastic -> int(3 * 0.99) = 2 trained steps; old
    log-probs reused: current + reference forwards per step, one backward."""
    t = tiny_trainer("estimator=trajectory", "sampler=flow_sde", "kl=sde_mean")
    t.train_step()
    assert t.progress.compute.nfe_forward == 8 * 3 + 8 * 2 * 2
    assert t.progress.compute.nfe_backward == 8 * 2


def test_optimizer_and_lr_schedule_are_components(tiny_trainer):
    """optimizer=adam builds torch.optim.Adam; lr_schedule=warmup ramps the logged lr linearly
    over its optimizer steps (LinearLR from start_factor to 1)."""
    t = tiny_trainer("optimizer=adam", "optimizer.lr=0.01", "lr_schedule=warmup",
                "lr_schedule.start_factor=0.5", "lr_schedule.total_iters=2")
    assert type(t.optimizer) is torch.optim.Adam
    lrs = [t.train_step()["lr"] for _ in range(3)]
    assert lrs == pytest.approx([0.0075, 0.01, 0.01])
