"""The train/rollout log-prob mismatch bug: when current and old hold the same weights, the ratio
recomputed in training is 1 (float32, training micro-batches of another size than the rollout's)."""
import pytest
import torch
from omegaconf import OmegaConf

from rlzoo.config import CONF_DIR, build
from rlzoo.estimators import ELBOEstimator, TrajectoryEstimator
from rlzoo.policies import Policy
from rlzoo.tasks.toy2d import Toy2DTask, Toy2DVelocity

SAMPLERS = sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml"))


def rollout_for(sampler_name, record):
    torch.manual_seed(0)
    task = Toy2DTask()
    policy = Policy(Toy2DVelocity())
    sampler = build(OmegaConf.load(CONF_DIR / "sampler" / f"{sampler_name}.yaml"))
    ids = torch.arange(4).repeat_interleave(3)
    cond = task.conditioning([task.train_prompts()[i] for i in ids.tolist()], ids, ids)
    noise = torch.randn(12, 2)
    rollout = sampler.sample(policy.velocity_fn("old"), noise, cond, record=record,
                             generator=torch.Generator().manual_seed(1))
    return policy, sampler, rollout


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("micro_batch", [5, 12])
def test_elbo_ratio_is_one(sampler_name, micro_batch):
    policy, sampler, rollout = rollout_for(sampler_name, record=False)
    estimator = ELBOEstimator()
    for term in estimator.terms(policy, rollout, micro_batch, need_reference=True,
                                generator=torch.Generator().manual_seed(2)):
        assert term.log_lik.dtype == torch.float32
        assert (term.log_lik.detach() - term.log_lik_old).abs().max() < 1e-5


SDE_SAMPLERS = [s for s in SAMPLERS if s not in ("euler", "dpm2", "dpm2s")]


@pytest.mark.parametrize("sampler_name", SDE_SAMPLERS)
@pytest.mark.parametrize("micro_batch", [5, 12])
def test_recorded_log_probs_equal_recomputed_ones(sampler_name, micro_batch):
    """For every SDE kernel, every stochastic step (the last one included): the log-prob the
    sampler recorded while drawing = the one recomputed under the behaviour weights, and the
    current policy's (same weights) agrees with both, to 1e-5 in float32."""
    policy, sampler, rollout = rollout_for(sampler_name, record=True)
    estimator = TrajectoryEstimator(timestep_fraction=1.0, recompute_old=True)
    terms = list(estimator.terms(policy, rollout, micro_batch, need_reference=False))
    steps = torch.nonzero(rollout.stochastic).flatten().tolist()
    assert len(terms) == -(-12 // micro_batch) * len(steps)
    for term, k in zip(terms, steps * -(-12 // micro_batch)):
        assert term.log_lik.dtype == torch.float32 and term.nfe_forward == 2 * len(term.index)
        assert (term.log_lik_old - rollout.log_probs[term.index, k]).abs().max() < 1e-5
        assert (term.log_lik.detach() - term.log_lik_old).abs().max() < 1e-5


@pytest.mark.parametrize("sampler_name", SDE_SAMPLERS)
def test_trajectory_reuses_the_recorded_log_probs(sampler_name):
    """By default the old log-probs are the recorded ones (no forward spent on them), and only
    the steps k < int(K·0.99) are trained (FlowGRPO: 9 of 10)."""
    policy, sampler, rollout = rollout_for(sampler_name, record=True)
    terms = list(TrajectoryEstimator().terms(policy, rollout, 12, need_reference=True))
    trained = [k for k in torch.nonzero(rollout.stochastic).flatten().tolist() if k < 9]
    assert len(terms) == len(trained)
    for term, k in zip(terms, trained):
        assert torch.equal(term.log_lik_old, rollout.log_probs[:, k])
        assert term.nfe_forward == 2 * len(term.index)  # current + reference, no old forward
        assert (term.log_lik.detach() - term.log_lik_old).abs().max() < 1e-5
