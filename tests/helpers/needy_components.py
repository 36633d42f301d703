"""Components for tests: an objective that reads a LikelihoodTerm field no estimator provides."""
from rlzoo.objectives import EPG


class NeedsScore(EPG):
    needs = frozenset({"score"})  # a field nobody provides
