"""Compositional prompts in GenEval's families, their meaning (`Spec`), and how to check them.

families (GenEval's names): single_object "a circle" · colors "a red circle" ·
counting "two circles" · two_object "a circle and a square" · position "a circle left of a square"
· color_attr "a red circle and a blue square".
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from functools import lru_cache

from rlzoo.tasks.shapes.scene import COLOURS, GRID, SHAPES, Obj

FAMILIES = ("single_object", "colors", "counting", "two_object", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three"}
PLURAL = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}


@dataclass(frozen=True)
class Spec:
    """What a prompt asks for. `objects` are (colour or None, shape) pairs."""

    family: str
    objects: tuple[tuple[str | None, str], ...]
    count: int | None = None
    relation: str | None = None

    @property
    def number(self) -> int:
        """How many objects a counting prompt asks for."""
        if self.count is None:
            raise ValueError(f"a {self.family} prompt counts nothing")
        return self.count

    @property
    def text(self) -> str:
        def obj(c, s):
            return f"a {c} {s}" if c else f"a {s}"

        if self.family == "counting":
            return f"{COUNT_WORDS[self.number]} {PLURAL[self.objects[0][1]]}"
        if self.family == "position":
            return f"{obj(*self.objects[0])} {self.relation} {obj(*self.objects[1])}"
        return " and ".join(obj(c, s) for c, s in self.objects)


def _family_specs(family: str) -> list[Spec]:
    colours, shapes = list(COLOURS), list(SHAPES)
    pairs = [(a, b) for a in shapes for b in shapes if a != b]
    if family == "single_object":
        return [Spec(family, ((None, s),)) for s in shapes]
    if family == "colors":
        return [Spec(family, ((c, s),)) for c in colours for s in shapes]
    if family == "counting":
        return [Spec(family, ((None, s),), count=n) for n in COUNT_WORDS for s in shapes]
    if family == "two_object":
        return [Spec(family, ((None, a), (None, b))) for a, b in pairs if a < b]
    if family == "position":
        return [Spec(family, ((None, a), (None, b)), relation=r) for a, b in pairs for r in RELATIONS]
    if family == "color_attr":
        return [Spec(family, ((c1, a), (c2, b))) for a, b in pairs for c1 in colours for c2 in colours
                if c1 != c2]
    raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")


@lru_cache(maxsize=None)
def all_specs() -> dict[str, list[Spec]]:
    return {f: _family_specs(f) for f in FAMILIES}


def _hash(spec: Spec) -> str:
    return hashlib.sha256(spec.text.encode()).hexdigest()


def _stratum(spec: Spec) -> tuple:
    """Sub-types a family's held-out share must cover: each count, each relation."""
    return (spec.family, spec.count, spec.relation)


@lru_cache(maxsize=None)
def split(fraction: float = 0.3) -> tuple[tuple[Spec, ...], tuple[Spec, ...]]:
    """(train, heldout) specs, stratified: within every family and sub-type (counting: each count;
    position: each relation) the round(fraction·n) prompts (at least one, never all) with the
    smallest hash of their text are held out. Deterministic, and a family's held-out score
    averages over its sub-types instead of depending on which ones a hash happened to pick."""
    strata: dict[tuple, list[Spec]] = {}
    for specs in all_specs().values():
        for spec in specs:
            strata.setdefault(_stratum(spec), []).append(spec)
    held = set()
    for specs in strata.values():
        k = min(len(specs) - 1, max(1, round(fraction * len(specs))))
        held |= set(sorted(specs, key=_hash)[:k])
    train = tuple(s for specs in all_specs().values() for s in specs if s not in held)
    heldout = tuple(s for specs in all_specs().values() for s in specs if s in held)
    return train, heldout


@lru_cache(maxsize=None)
def spec_of(prompt: str) -> Spec:
    for specs in all_specs().values():
        for spec in specs:
            if spec.text == prompt:
                return spec
    raise ValueError(f"not a shapes prompt: {prompt!r}")


# ------------------------------------------------------------------------------ checking
def _relation_holds(a: Obj, b: Obj, relation: str) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col,
            "above": a.row < b.row, "below": a.row > b.row}[relation]


def _matches(obj: Obj, colour: str | None, shape: str) -> bool:
    return obj.shape == shape and (colour is None or obj.colour == colour)


def check(spec: Spec, objects: list[Obj]) -> tuple[bool, float]:
    """(strict, soft) for the objects detected in an image.

    strict: the image shows exactly what the prompt asks: the requested objects (with their
    colours, count and relation) and nothing else. This is stricter than GenEval, which ignores
    extra objects; with extras allowed, RL learned to fill every cell (measured, see README).
    soft: the fraction of the prompt's atomic facts that hold (each object present, its colour,
    the count, the relation, and "no unrequested objects")."""
    wanted = spec.count if spec.family == "counting" else len(spec.objects)
    exact = len(objects) == wanted
    if spec.family == "counting":
        shape = spec.objects[0][1]
        n = sum(o.shape == shape for o in objects)
        return n == spec.number and exact, (max(0.0, 1.0 - abs(n - spec.number) / spec.number) + exact) / 2
    present = [any(o.shape == s for o in objects) for _, s in spec.objects]
    coloured = [any(_matches(o, c, s) for o in objects) for c, s in spec.objects if c is not None]
    (c1, s1), *rest = spec.objects
    if not rest:
        satisfied = coloured[0] if coloured else present[0]
        facts = present + coloured + [exact]
        return satisfied and exact, sum(facts) / len(facts)
    c2, s2 = rest[0]
    pairs = [(a, b) for a in objects for b in objects if a.cell != b.cell
             and _matches(a, c1, s1) and _matches(b, c2, s2)]
    if spec.relation is not None:
        related = any(_relation_holds(a, b, spec.relation) for a, b in pairs)
        return related and exact, (sum(present) + related + exact) / 4
    facts = present + coloured + [exact]
    return bool(pairs) and exact, sum(facts) / len(facts)


# ------------------------------------------------------------------------------ scenes
def sample_scene(spec: Spec, rng: random.Random, extra_prob: float = 0.0) -> tuple[Obj, ...]:
    """A random scene that satisfies `spec`; with `extra_prob`, one unrelated extra object is
    added where it keeps the prompt true in GenEval's looser sense (used to build wrong renders)."""
    colours, cells = list(COLOURS), list(range(GRID * GRID))
    rng.shuffle(cells)

    def colour(c):
        return c if c is not None else rng.choice(colours)

    if spec.family == "counting":
        shape = spec.objects[0][1]
        objs = [Obj(colour(None), shape, cells[i]) for i in range(spec.number)]
    elif spec.relation is not None:
        (ca, sa), (cb, sb) = spec.objects
        pairs = [(a, b) for a in range(GRID * GRID) for b in range(GRID * GRID) if a != b and
                 _relation_holds(Obj("", "", a), Obj("", "", b), spec.relation)]
        a, b = rng.choice(pairs)
        objs = [Obj(colour(ca), sa, a), Obj(colour(cb), sb, b)]
        cells = [a, b] + [c for c in cells if c not in (a, b)]
    else:
        objs = [Obj(colour(c), s, cells[i]) for i, (c, s) in enumerate(spec.objects)]
    used = len(objs)
    if used < len(cells) and rng.random() < extra_prob:
        extra = Obj(rng.choice(colours), rng.choice(SHAPES), cells[used])
        objs.append(extra)
    return tuple(objs)


def corrupt(spec: Spec, rng: random.Random) -> Spec:
    """The same family with one slot changed (a caption that no longer describes the image)."""
    if spec.family == "counting":
        return replace(spec, count=5 - spec.number)
    options = []
    for i, (c, s) in enumerate(spec.objects):
        others = [o[1] for j, o in enumerate(spec.objects) if j != i]
        for s_new in SHAPES:
            if s_new != s and s_new not in others:
                options.append(("shape", i, s_new))
        if c is not None:
            taken = [o[0] for j, o in enumerate(spec.objects) if j != i]
            options += [("colour", i, c_new) for c_new in COLOURS if c_new != c and c_new not in taken]
    if spec.relation is not None:
        options += [("relation", 0, r) for r in RELATIONS if r != spec.relation]
    kind, i, value = rng.choice(options)
    if kind == "relation":
        return replace(spec, relation=value)
    objects = list(spec.objects)
    c, s = objects[i]
    objects[i] = (c, value) if kind == "shape" else (value, s)
    return replace(spec, objects=tuple(objects))
