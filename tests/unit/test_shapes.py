"""The shapes task: prompts, split, renders and the rule-based verifier."""
import random

import pytest
import torch

from rlzoo.tasks.shapes import ShapesTask
from rlzoo.tasks.shapes.model import tokenize, vocabulary
from rlzoo.tasks.shapes.prompts import (
    FAMILIES,
    RELATIONS,
    Spec,
    all_specs,
    check,
    split,
)
from rlzoo.tasks.shapes.scene import COLOURS, SHAPES, TWO_COLOUR_PATTERNS, Obj, render, render_two_coloured

SIZE = 24





def test_split_is_disjoint_and_covers_every_family():
    train, heldout = split()
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == {s for specs in all_specs().values() for s in specs}
    for family in FAMILIES:
        assert any(s.family == family for s in train), family
        assert any(s.family == family for s in heldout), family


def test_split_is_stratified_by_count_and_relation():
    train, heldout = split()
    for part in (train, heldout):
        assert {s.count for s in part if s.family == "counting"} == {2, 3}
        assert {s.relation for s in part if s.family == "position"} == set(RELATIONS)
    assert all(sum(s.relation == r for s in heldout) == 4 for r in RELATIONS)  # round(0.3 * 12)


def test_prompts_round_trip_through_the_tokenizer():
    prompts = [s.text for specs in all_specs().values() for s in specs]
    ids = tokenize(prompts, 8)
    words = vocabulary()
    for prompt, row in zip(prompts, ids):
        assert " ".join(words[i] for i in row.tolist() if i) == prompt
    with pytest.raises(ValueError, match="more than 8 words"):
        tokenize(["a red circle and a blue square and more"], 8)


def test_verifier_reads_random_scenes_exactly(verifier):
    rng = random.Random(0)
    for _ in range(300):
        cells = rng.sample(range(4), rng.randint(1, 4))
        scene = tuple(Obj(rng.choice(list(COLOURS)), rng.choice(SHAPES), c) for c in sorted(cells))
        found = verifier.detect(render(scene, SIZE)[None])[0]
        assert tuple(found) == scene


def _verify(verifier, scene, prompt_spec):
    return bool(verifier(render(scene, SIZE)[None], [prompt_spec])[0][0])


def test_verifier_rejects_wrong_colour(verifier):
    spec = Spec("colors", (("red", "circle"),))
    assert _verify(verifier, (Obj("red", "circle", 0),), spec)
    assert not _verify(verifier, (Obj("blue", "circle", 0),), spec)
    assert not _verify(verifier, (Obj("red", "square", 0),), spec)


def test_verifier_rejects_wrong_count(verifier):
    spec = Spec("counting", ((None, "triangle"),), count=2)
    two = (Obj("red", "triangle", 0), Obj("blue", "triangle", 3))
    assert _verify(verifier, two, spec)
    assert not _verify(verifier, two[:1], spec)
    assert not _verify(verifier, two + (Obj("green", "triangle", 1),), spec)
    assert not _verify(verifier, two + (Obj("green", "circle", 1),), spec)  # nothing unrequested


def test_verifier_rejects_wrong_position(verifier):
    spec = Spec("position", ((None, "circle"), (None, "square")), relation="left of")
    assert _verify(verifier, (Obj("red", "circle", 0), Obj("blue", "square", 1)), spec)
    assert not _verify(verifier, (Obj("red", "circle", 1), Obj("blue", "square", 0)), spec)
    above = Spec("position", ((None, "circle"), (None, "square")), relation="above")
    assert _verify(verifier, (Obj("red", "circle", 1), Obj("blue", "square", 3)), above)
    assert not _verify(verifier, (Obj("red", "circle", 1), Obj("blue", "square", 0)), above)


def test_verifier_rejects_swapped_colour_binding(verifier):
    spec = Spec("color_attr", (("red", "circle"), ("blue", "square")))
    assert _verify(verifier, (Obj("red", "circle", 0), Obj("blue", "square", 3)), spec)
    assert not _verify(verifier, (Obj("blue", "circle", 0), Obj("red", "square", 3)), spec)


@pytest.mark.parametrize("pattern", TWO_COLOUR_PATTERNS)
@pytest.mark.parametrize("shape", SHAPES)
def test_verifier_rejects_two_coloured_objects(verifier, pattern, shape):
    """A blob blended from two colours, or striped, is no object of either colour — its mean colour
    can sit within reach of one of them (red + yellow -> orange), which the old rule accepted."""
    colours = list(COLOURS)
    for colour_a, colour_b in [(a, b) for a in colours for b in colours if a < b]:
        image = render_two_coloured(shape, colour_a, colour_b, 0, pattern, SIZE)
        (found,) = verifier.detect(image[None])[0]
        assert found.colour == "unknown", (pattern, colour_a, colour_b, found)
        for colour in (colour_a, colour_b):
            assert not verifier(image[None], [Spec("colors", ((colour, shape),))])[0][0]
        # it is still an object, of the right shape: a prompt that names no colour is satisfied
        assert found.shape == shape
        assert verifier(image[None], [Spec("single_object", ((None, shape),))])[0][0]


def test_verifier_keeps_one_coloured_objects_with_dim_edges(verifier):
    """Hue, not brightness, decides a pixel's colour: a darker copy of an object keeps its colour."""
    spec = Spec("colors", (("red", "triangle"),))
    image = render((Obj("red", "triangle", 0),), SIZE)
    dimmed = (image + 1) / 2 * 0.7 * 2 - 1
    assert verifier(dimmed[None], [spec])[0][0]


def test_verifier_treats_noise_and_blank_images_as_failures(verifier):
    spec = Spec("single_object", ((None, "circle"),))
    blank = -torch.ones(1, 3, SIZE, SIZE)
    noise = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert not verifier(blank, [spec])[0][0]
    assert not verifier(noise, [spec])[0][0]


def test_unrequested_objects_fail_strict():
    spec = Spec("colors", (("red", "circle"),))
    assert check(spec, [Obj("red", "circle", 0)]) == (True, 1.0)
    assert check(spec, [Obj("red", "circle", 0), Obj("blue", "square", 1)]) == (False, 2 / 3)


def test_soft_score_counts_atomic_facts():
    spec = Spec("color_attr", (("red", "circle"), ("blue", "square")))
    # facts: circle present, square present, red circle, blue square, nothing unrequested
    assert check(spec, [Obj("red", "circle", 0), Obj("green", "square", 1)]) == (False, 0.8)
    three = Spec("counting", ((None, "circle"),), count=3)
    assert check(three, [Obj("red", "circle", 0)])[1] == pytest.approx((1 / 3 + 0) / 2)
    position = Spec("position", ((None, "circle"), (None, "square")), relation="above")
    assert check(position, [Obj("red", "circle", 1), Obj("blue", "square", 0)]) == (False, 0.75)


def test_eval_ids_balance_families():
    task = ShapesTask()
    ids = task.eval_prompt_ids(120)
    from rlzoo.tasks.shapes.prompts import spec_of
    families = [spec_of(task.heldout_prompts()[i]).family for i in ids]
    assert all(families.count(f) == 20 for f in FAMILIES)


def test_the_frozen_text_encoder_runs_once_per_prompt_batch_and_view():
    """A rollout's steps and an update's terms reuse the encoding of their prompts; the output is
    the encoder's own (bit for bit), taken again when the weights or the mode change, and never
    kept while the encoder trains (rlzoo-pretrain)."""
    from rlzoo.tasks.shapes.model import ShapesPolicyModel

    torch.manual_seed(0)
    task = ShapesTask()
    model = ShapesPolicyModel(image_size=24, num_layers=1, attention_head_dim=8, text_dim=16, text_layers=1,
                              text_heads=2)
    model.text_encoder.requires_grad_(False)
    cond = task.group_conditioning(task.sample_train_prompts(2, torch.Generator().manual_seed(0)), 4)
    calls = []
    model.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    x, sigma = torch.randn(8, 3, 24, 24), torch.full((8,), 0.5)
    first = model(x, sigma, cond)
    for _ in range(3):  # the sampler's steps, the estimator's terms
        assert torch.equal(model(x, sigma, cond), first)
    assert len(calls) == 1
    assert torch.equal(model.encode_prompts(cond)[0], model.text_encoder(cond.inputs["tokens"])[0])
    model.eval()  # another mode, another kernel: its own encoding
    model(x, sigma, cond)
    assert len(calls) == 3  # (the direct call above, and this one)
    with torch.no_grad():  # new weights (a loaded state_dict): encoded again
        model.text_encoder.position.add_(1.0)
    changed = model(x, sigma, cond)
    assert len(calls) == 4 and not torch.equal(changed, first)
    model.text_encoder.requires_grad_(True)  # pretraining: the encoder trains, nothing is kept
    model(x, sigma, cond), model(x, sigma, cond)
    assert len(calls) == 6
