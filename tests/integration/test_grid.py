"""Every valid objective × estimator × sampler combination trains for 2 iterations on toy2d."""
import math

import pytest
from common import tiny

from rlzoo.config import build_components, compose_config, valid_grid, validate
from rlzoo.trainer import Trainer

TINY = tiny("train.micro_batch_size=4")  # two micro-batches per term


@pytest.mark.parametrize("objective,estimator,sampler", valid_grid())
def test_combination_trains(tmp_path, objective, estimator, sampler):
    overrides = [f"objective={objective}", f"estimator={estimator}", f"sampler={sampler}", *TINY]
    if estimator == "trajectory":
        overrides.append("kl=sde_mean")
    if sampler == "mixed":
        overrides.append("sampler.window=[0,2]")
    cfg = compose_config(overrides)
    validate(cfg)
    summary = Trainer(cfg, tmp_path, build_components(cfg)).fit()
    assert summary["status"] == "completed" and summary["iterations"] == 2
    assert math.isfinite(summary["final"]["reward"])
    assert summary["compute"]["nfe_backward"] > 0
