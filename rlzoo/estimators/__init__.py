"""Likelihood estimators: what "the log-likelihood of a sample" means for a flow model."""
from rlzoo.estimators.elbo import ELBOEstimator, elbo_term

__all__ = ["ELBOEstimator", "elbo_term"]
