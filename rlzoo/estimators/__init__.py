"""Likelihood estimators: what "the log-likelihood of a sample" means for a flow model."""
from rlzoo.estimators.elbo import ELBOEstimator, elbo_term
from rlzoo.estimators.trajectory import TrajectoryEstimator

__all__ = ["ELBOEstimator", "TrajectoryEstimator", "elbo_term"]
