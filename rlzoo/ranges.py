"""Range checks for a component's numeric arguments: a value outside the range in which it means
what its name says (a negative KL coefficient, an EMA cap of 1.5, zero ELBO terms) is refused
with one line naming the key, the valid range and the value, before any compute."""
from __future__ import annotations

import math
from typing import Any


def check(name: str, value: Any, low: float | None = None, high: float | None = None, *, integer: bool = False,
          low_open: bool = False, high_open: bool = False, optional: bool = False, note: str = "") -> Any:
    """`value` if it is a finite number (an int with `integer`) within [low, high] (open ends as
    flagged; None = unbounded), None if `optional` and None; else ValueError:
    "kl.beta must be a finite number >= 0 (0 turns the KL off), got -0.1"."""
    if value is None and optional:
        return None
    fits = False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # an int key takes an int: 12.0 or 1e3 would pass here and break a range() or a seed later
        fits = isinstance(value, int) if integer else math.isfinite(value)
        if fits and low is not None:
            fits = value > low if low_open else value >= low
        if fits and high is not None:
            fits = value < high if high_open else value <= high
    if not fits:
        raise ValueError(f"{name} must be {describe(low, high, integer, low_open, high_open)}"
                         f"{' or null' if optional else ''}{f' ({note})' if note else ''}, got {value!r}")
    return value


def describe(low, high, integer: bool = False, low_open: bool = False, high_open: bool = False) -> str:
    kind = "an int" if integer else "a finite number"
    low, high = (_text(low), _text(high))
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high}"
    return kind


def _text(bound) -> str | None:
    return None if bound is None else str(bound) if isinstance(bound, int) else f"{bound:g}"


def first_non_finite(node, prefix: str = ""):
    """(key, value) of the first NaN or infinite number anywhere in a plain container, or None."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{prefix}{key}", value
        found = first_non_finite(value, f"{prefix}{key}.")
        if found:
            return found
    return None
