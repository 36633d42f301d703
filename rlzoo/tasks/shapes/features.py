"""The feature network of shapes' FID and KID (Inception's role, without a download).

A small CNN trained to read a render: for each of the 2×2 cells, which shape is there (or none)
and in which colour. Its 64-dimensional penultimate layer is the feature space in which
torchmetrics' FrechetInceptionDistance and KernelInceptionDistance compare sample sets
(`sample_metrics`), divided by their RMS on renders so that distances are in units of it. It is trained on renders of random scenes of every prompt family (the
pretraining distribution), with a little Gaussian pixel noise so that near-clean samples map near
their clean renders; deterministic (fixed seeds, one thread), shipped as
rlzoo/tasks/base_models/shapes_features.pt and rebuilt by `make features`, which also writes its
held-out accuracy to experiments/results/base_models/shapes_features.txt.

    python -m rlzoo.tasks.shapes.features --out rlzoo/tasks/base_models/shapes_features.pt
"""
from __future__ import annotations

import argparse
import functools
import random
from pathlib import Path

import torch
from torch import Tensor, nn

from rlzoo.tasks.shapes.prompts import FAMILIES, all_specs, sample_scene
from rlzoo.tasks.shapes.scene import COLOURS, GRID, SHAPES, render

CELLS = GRID * GRID
CLASSES = 1 + len(SHAPES)  # none or a shape; the same count for colours (none or a colour)
CHECKPOINT = Path(__file__).resolve().parents[1] / "base_models" / "shapes_features.pt"


class ShapesFeatures(nn.Module):
    """images (B, 3, H, W) in [0, 1] (torchmetrics' `normalize=True` convention) -> (B, 64)."""

    num_features = 64  # torchmetrics reads this instead of probing with a dummy image
    scale: Tensor  # (a buffer: the feature scale measured on held-out renders)

    def __init__(self, image_size: int = 24):
        super().__init__()
        self.image_size = image_size
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(64 * (image_size // 4) ** 2, self.num_features), nn.ReLU())
        self.head = nn.Linear(self.num_features, CELLS * 2 * CLASSES)  # per cell: shape logits, colour logits
        # set after training: the features' RMS on renders, so distances come in units of it
        # (KID's cubic kernel needs features of order one, as Inception's are)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, images: Tensor) -> Tensor:
        return self.body(images.float() * 2 - 1) / self.scale

    def logits(self, images: Tensor) -> Tensor:
        """(B, cells, 2, classes): shape and colour logits per cell."""
        return self.head(self.body(images.float() * 2 - 1)).view(-1, CELLS, 2, CLASSES)


def labelled_renders(n: int, rng: random.Random, image_size: int = 24) -> tuple[Tensor, Tensor]:
    """n renders of random scenes (family first, as pretraining draws them) in [0, 1], and their
    labels (n, cells, 2): shape index + 1 and colour index + 1 per cell, 0 = empty."""
    specs, colours = all_specs(), list(COLOURS)
    images, labels = [], torch.zeros(n, CELLS, 2, dtype=torch.long)
    for i in range(n):
        scene = sample_scene(rng.choice(specs[rng.choice(FAMILIES)]), rng, extra_prob=0.3)
        images.append((render(scene, image_size) + 1) / 2)
        for obj in scene:
            labels[i, obj.cell] = torch.tensor([SHAPES.index(obj.shape) + 1, colours.index(obj.colour) + 1])
    return torch.stack(images), labels


def accuracy(net: ShapesFeatures, images: Tensor, labels: Tensor) -> dict[str, float]:
    with torch.no_grad():
        predicted = net.logits(images).argmax(-1)
    right = predicted == labels
    return {"shape": float(right[..., 0].float().mean()), "colour": float(right[..., 1].float().mean()),
            "image": float(right.flatten(1).all(1).float().mean())}


def train(steps: int = 1500, batch_size: int = 128, lr: float = 1e-3, noise_std: float = 0.1, seed: int = 0,
          image_size: int = 24, log=print) -> tuple[ShapesFeatures, dict]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    net = ShapesFeatures(image_size)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        images, labels = labelled_renders(batch_size, rng, image_size)
        noisy = images + noise_std * torch.rand(batch_size, 1, 1, 1, generator=generator) * torch.randn(
            images.shape, generator=generator)
        loss = nn.functional.cross_entropy(net.logits(noisy).flatten(0, 2), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            log(f"step {step}: loss {loss.item():.4f}")
    test_images, test_labels = labelled_renders(2000, random.Random(seed + 1), image_size)
    with torch.no_grad():
        net.scale.copy_(net.body(test_images * 2 - 1).square().mean().sqrt())
    return net.eval(), accuracy(net, test_images, test_labels)


@functools.lru_cache(maxsize=None)
def load_features(path: str | Path = CHECKPOINT) -> ShapesFeatures:
    """The shipped network, loaded once per process (frozen, in eval mode)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"shapes' feature network {path} is missing; rebuild it with `make features`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = ShapesFeatures(int(state["image_size"]))
    net.load_state_dict(state["model"])
    return net.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", default=str(CHECKPOINT))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--report", default=None, help="also write the held-out accuracy here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # bit-for-bit reproducible on a CPU
    net, acc = train(steps=args.steps)
    torch.save({"model": net.state_dict(), "image_size": net.image_size, "accuracy": acc}, args.out)
    line = (f"held-out accuracy on 2000 fresh renders (per cell): shape {acc['shape']:.4f}, colour "
            f"{acc['colour']:.4f}; whole image right {acc['image']:.4f}")
    print(line)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(f"python -m rlzoo.tasks.shapes.features --steps {args.steps}\n{line}\n")


if __name__ == "__main__":
    main()
