"""The shapes task: prompts, split, renders and the rule-based verifier."""
import random

import pytest
import torch

from rlzoo.tasks.shapes.prompts import (
    FAMILIES,
    sample_scene,
    split,
)
from rlzoo.tasks.shapes.scene import render

SIZE = 24





@pytest.mark.parametrize("family", FAMILIES)
def test_verifier_accepts_clean_renders_of_heldout_prompts(verifier, family):
    """Acceptance: >= 99% strict on >= 2,000 clean renders, every family."""
    rng = random.Random(family)
    specs = [s for s in split()[1] if s.family == family]
    chosen = [specs[i % len(specs)] for i in range(2000)]
    images = torch.stack([render(sample_scene(s, rng), SIZE) for s in chosen])
    strict, soft = verifier(images, chosen)
    assert strict.mean() >= 0.99
    assert soft.mean() >= 0.99
