"""Scenes of coloured shapes on a 2×2 grid, rendered procedurally.

A scene is a tuple of `Obj(colour, shape, cell)`; cells are numbered row-major
(0 = top-left, 1 = top-right, 2 = bottom-left, 3 = bottom-right). Images are (3, H, W) in [-1, 1]
on a black background.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

COLOURS = {"red": (1.0, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "blue": (0.15, 0.3, 1.0),
           "yellow": (1.0, 0.9, 0.1)}
SHAPES = ("circle", "square", "triangle", "cross")
GRID = 2  # cells per side


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    cell: int

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID


@lru_cache(maxsize=None)
def shape_mask(shape: str, cell_size: int) -> Tensor:
    """(cell_size, cell_size) bool mask of a shape centred in its cell."""
    c = (cell_size - 1) / 2
    y, x = torch.meshgrid(torch.arange(cell_size, dtype=torch.float64),
                          torch.arange(cell_size, dtype=torch.float64), indexing="ij")
    half = cell_size * 0.4  # the shape spans 80% of the cell
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= (half + 0.3) ** 2
    if shape == "square":
        return ((x - c).abs() <= half - 0.5) & ((y - c).abs() <= half - 0.5)
    if shape == "triangle":  # apex up: width grows linearly from top to bottom
        top, bottom = c - half, c + half
        rel = (y - top) / (bottom - top)
        return (y >= top) & (y <= bottom) & ((x - c).abs() <= rel * half + 0.3)
    if shape == "cross":
        arm = max(1.0, cell_size * 0.12)
        inside = ((x - c).abs() <= half) & ((y - c).abs() <= half)
        return inside & (((x - c).abs() <= arm) | ((y - c).abs() <= arm))
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def render(scene: tuple[Obj, ...], image_size: int) -> Tensor:
    """(3, H, W) image in [-1, 1] of the scene."""
    cell = image_size // GRID
    image = torch.zeros(3, image_size, image_size)
    for obj in scene:
        mask = shape_mask(obj.shape, cell)
        colour = torch.tensor(COLOURS[obj.colour]).view(3, 1, 1)
        patch = image[:, obj.row * cell:(obj.row + 1) * cell, obj.col * cell:(obj.col + 1) * cell]
        patch[:, mask] = colour.expand(3, cell, cell)[:, mask]
    return image * 2 - 1


TWO_COLOUR_PATTERNS = ("blend", "stripes", "halves")


def render_two_coloured(shape: str, colour_a: str, colour_b: str, cell: int, pattern: str,
                        image_size: int) -> Tensor:
    """(3, H, W) one object whose ink mixes two palette colours — the kind of blob RL learns to
    draw to satisfy several colour words at once: `blend` = every pixel the mean of the two,
    `stripes` = alternate rows, `halves` = the left half of the cell one colour, the right half the
    other. Used to check that the verifier does not read it as either colour."""
    if pattern not in TWO_COLOUR_PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; valid: {', '.join(TWO_COLOUR_PATTERNS)}")
    image = render((Obj(colour_a, shape, cell),), image_size)
    other = render((Obj(colour_b, shape, cell),), image_size)
    if pattern == "blend":
        return (image + other) / 2
    size = image_size // GRID
    rows = torch.arange(image_size).view(-1, 1).expand(image_size, image_size)
    cols = torch.arange(image_size).view(1, -1).expand(image_size, image_size)
    take_other = (rows % 2 == 1) if pattern == "stripes" else (cols % size >= size // 2)
    return torch.where(take_other, other, image)
