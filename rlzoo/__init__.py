"""rlzoo: reinforcement learning for flow-matching image models, one component at a time."""

__version__ = "0.1.0"
