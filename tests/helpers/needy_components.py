"""Components for tests: objectives whose declared needs cannot be met."""
from rlzoo.objectives import EPG


class NeedsScore(EPG):
    needs = frozenset({"score"})  # not a field of a LikelihoodTerm at all (a misspelt declaration)


class NeedsMean(EPG):
    needs = frozenset({"mean"})  # a trajectory estimator's field: the ELBO does not provide it
