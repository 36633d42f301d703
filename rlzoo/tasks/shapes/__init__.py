"""shapes: the GenEval analogue. Procedural images of coloured shapes on a 2×2 grid, prompts in
GenEval's six families, a rule-based verifier, and a small pixel-space MMDiT base model.

The base model is pretrained on captions that are only partly right (`caption_noise`): with that
probability an image is rendered from a *corrupted* version of its caption (one colour, shape,
count or relation changed), as web alt-text often is. The model learns to render cleanly but to
follow the prompt only loosely — mediocre at composition, as SD3.5-M without CFG is on GenEval —
and the right answer stays inside its distribution, so RL can find and sharpen it.

A share of pretraining captions (`caption_dropout`) is the empty prompt, so the model also learns
the unconditional velocity and classifier-free guidance (`sampler.cfg_scale`) is meaningful here.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlzoo.tasks.base import Task, checked_eval_rewards
from rlzoo.tasks.shapes.prompts import FAMILIES, all_specs, corrupt, sample_scene, spec_of, split
from rlzoo.tasks.shapes.scene import render
from rlzoo.tasks.shapes.verifier import Verifier
from rlzoo.types import Conditioning


class ShapesTask(Task):
    name = "shapes"
    pretrain_command = "rlzoo-pretrain task=shapes"

    supports_guidance = True

    makes_images = True  # its samples are pixels: image rewards score them (a CPU playground for learnt rewards)
    has_verifier = True

    def __init__(self, image_size: int = 24, heldout_fraction: float = 0.3, caption_noise: float = 0.6,
                 max_length: int = 8, reward_soft_weight: float = 0.0, caption_dropout: float = 0.0,
                 eval_rewards: dict | None = None):
        from rlzoo.ranges import check

        check("task.caption_dropout", caption_dropout, 0, 1, high_open=True)
        check("task.caption_noise", caption_noise, 0, 1)
        check("task.heldout_fraction", heldout_fraction, 0, 1, low_open=True, high_open=True)
        check("task.reward_soft_weight", reward_soft_weight, 0, 1, note="the soft score's share of the reward")
        check("task.image_size", image_size, 1, integer=True)
        check("task.max_length", max_length, 1, integer=True)
        self.image_size = image_size
        self.caption_dropout = caption_dropout
        self.sample_shape = (3, image_size, image_size)
        self.caption_noise = caption_noise
        self.max_length = max_length
        self.reward_soft_weight = reward_soft_weight
        train, heldout = split(heldout_fraction)
        self._train = [s.text for s in train]
        self._heldout = [s.text for s in heldout]
        self._train_by_family = {f: [s.text for s in train if s.family == f] for f in FAMILIES}
        self._train_index = {p: i for i, p in enumerate(self._train)}
        # pretraining covers the whole prompt space (train and held-out), like web data; its order
        # does not depend on the split, so the base model does not either
        self._all_by_family = {f: all_specs()[f] for f in FAMILIES}
        self.verifier = Verifier(image_size)
        self.extra_eval_rewards = checked_eval_rewards(eval_rewards, ("reward", "verifier", "strict", "soft", "fid_data", "kid_data",
                                                                         "fid_teacher", "kid_teacher"))

    def train_prompts(self) -> list[str]:
        return self._train

    def heldout_prompts(self) -> list[str]:
        return self._heldout

    def sample_train_prompts(self, n: int, generator: torch.Generator) -> list[int]:
        """Family first, then a prompt of it: every family is trained on equally often."""
        families = torch.randint(len(FAMILIES), (n,), generator=generator).tolist()
        picks = []
        for f in families:
            prompts = self._train_by_family[FAMILIES[f]]
            picks.append(self._train_index[prompts[int(torch.randint(len(prompts), (1,), generator=generator))]])
        return picks

    def eval_prompt_ids(self, num_samples: int) -> list[int]:
        """The same number of samples for every family (GenEval averages families), round-robin
        over each family's held-out prompts."""
        per_family = num_samples // len(FAMILIES)
        ids = []
        for f in FAMILIES:
            rows = [i for i, p in enumerate(self._heldout) if spec_of(p).family == f]
            ids += [rows[k % len(rows)] for k in range(per_family)]
        return ids

    def conditioning(self, prompts, prompt_ids, group_ids) -> Conditioning:
        from rlzoo.tasks.shapes.model import tokenize

        return Conditioning(prompts=list(prompts), inputs={"tokens": tokenize(prompts, self.max_length)},
                            prompt_ids=prompt_ids, group_ids=group_ids)

    def negative_inputs(self, n: int) -> dict[str, Tensor]:
        """The empty prompt: all padding tokens (what caption dropout trained on)."""
        from rlzoo.tasks.shapes.model import tokenize

        return {"tokens": tokenize([""] * n, self.max_length)}

    def images(self, x0: Tensor) -> Tensor:
        """The samples ([-1, 1] pixels) as images in [0, 1]."""
        return ((x0.float() + 1) / 2).clamp(0, 1)

    def score(self, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        strict, soft = self.verifier(x0, [spec_of(p) for p in cond.prompts])
        w = self.reward_soft_weight
        return {"reward": (1 - w) * strict + w * soft, "strict": strict, "soft": soft}

    def summarize(self, scores: dict[str, Tensor], prompt_ids: Tensor) -> dict[str, float]:
        """GenEval-style: overall = mean of the per-family accuracies."""
        families = [spec_of(self._heldout[i]).family for i in prompt_ids.tolist()]
        out: dict[str, float] = {}
        for key in ("strict", "soft"):
            per_family = {}
            for f in FAMILIES:
                rows = [i for i, g in enumerate(families) if g == f]
                if rows:
                    per_family[f] = float(scores[key][rows].mean())
            out[key] = sum(per_family.values()) / len(per_family)
            out.update({f"{key}/{f}": v for f, v in per_family.items()})
        out["reward"] = out["strict"]
        return out

    def sample_data(self, prompt_ids: Tensor, seed: int = 0) -> Tensor:
        """Data for held-out prompts as pretraining shows it: a render of the prompt's scene, or
        with probability caption_noise of a corrupted version of it — the distribution the base
        model (the teacher) was trained to match. (B, 3, H, W) in [-1, 1]."""
        rng = random.Random(seed)
        specs = [spec_of(self._heldout[i]) for i in prompt_ids.tolist()]
        return torch.stack([render(sample_scene(corrupt(s, rng) if rng.random() < self.caption_noise else s, rng),
                                   self.image_size) for s in specs])

    def sample_metrics(self, x0: Tensor, prompt_ids: Tensor, teacher: Tensor | None = None) -> dict[str, float]:
        """FID and KID (torchmetrics) in the feature space of shapes' small render classifier
        (rlzoo.tasks.shapes.features) against the data of the same prompts (fid_data, kid_data)
        and, when given, against the teacher's samples on the same noise (fid_teacher, kid_teacher)."""
        if len(x0) < 16:  # (covariances and KID subsets need a set; debug runs have a handful)
            return {}
        references = {"data": self.sample_data(prompt_ids)}
        if teacher is not None:
            references["teacher"] = teacher
        features = image_features(x0)  # once, for every reference
        return {f"{metric}_{name}": value for name, reference in references.items()
                for metric, value in feature_distances(features, image_features(reference)).items()}

    def pretrain_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Conditioning]:
        """Renders of random prompts (family first); with probability caption_noise the image
        shows a corrupted version of its caption; with probability caption_dropout the caption is
        the empty prompt (with caption_dropout = 0 no draw is made: the stream is the old one)."""
        rng = random.Random(int(torch.randint(2**31, (1,), generator=generator)))
        captions, images = [], []
        for _ in range(batch_size):
            spec = rng.choice(self._all_by_family[rng.choice(FAMILIES)])
            shown = corrupt(spec, rng) if rng.random() < self.caption_noise else spec
            images.append(render(sample_scene(shown, rng), self.image_size))
            captions.append("" if self.caption_dropout and rng.random() < self.caption_dropout else spec.text)
        ids = torch.zeros(batch_size, dtype=torch.long)
        return torch.stack(images), self.conditioning(captions, ids, ids)

    def save_grid(self, x0: Tensor, cond: Conditioning, path: Path, columns: int = 8, scale: int = 5) -> None:
        """A PNG grid of samples (upscaled `scale`×), each with its prompt underneath and the
        verifier's verdict: a green (pass) or red (fail) frame and PASS / FAIL before the prompt."""
        from rlzoo.tasks.grid import image_grid

        n = min(len(x0), 64)
        strict = self.score(x0[:n], cond.select(torch.arange(n)))["strict"].bool().tolist()
        captions = [f"{'PASS' if ok else 'FAIL'}: {p}" for ok, p in zip(strict, cond.prompts[:n])]
        frames = [(0, 160, 0) if ok else (200, 0, 0) for ok in strict]
        image_grid((x0[:n] + 1) / 2, captions, path, columns=columns, tile=self.image_size * scale, frames=frames)



def image_features(images: Tensor) -> Tensor:
    """(B, 64) features of images in [-1, 1] from shapes' render classifier (its [0, 1] input)."""
    from rlzoo.tasks.shapes.features import load_features

    with torch.no_grad():
        return load_features()(((images.float().cpu() + 1) / 2).clamp(0, 1))


class _Extracted(nn.Module):
    """torchmetrics' "feature network" for features extracted once already: the identity."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # read by torchmetrics instead of probing with an image

    def forward(self, features: Tensor) -> Tensor:
        return features


def feature_distances(samples: Tensor, reference: Tensor) -> dict[str, float]:
    """{"fid": ..., "kid": ...} of two feature sets (`image_features`), through torchmetrics'
    FrechetInceptionDistance and KernelInceptionDistance (KID: the mean over 100 subsets of
    min(1000, n) rows)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(samples), len(reference))
    # sync_on_compute=False: under torchrun every rank already holds every sample (rlzoo.evaluate
    # gathers them); torchmetrics' own all-gather would count each sample once per rank
    local: dict[str, Any] = {"normalize": True, "sync_on_compute": False}
    fid = FrechetInceptionDistance(feature=_Extracted(samples.shape[1]), **local)
    with warnings.catch_warnings():  # "will save all extracted features": a few thousand 64-d rows here
        warnings.simplefilter("ignore")
        kid = KernelInceptionDistance(feature=_Extracted(samples.shape[1]), subsets=100,
                                      subset_size=min(1000, n), **local)
    with torch.random.fork_rng():  # KID draws its subsets from torch's global generator
        torch.manual_seed(0)
        for metric in (fid, kid):
            metric.update(reference, real=True)
            metric.update(samples, real=False)
        kid_mean, _ = kid.compute()
        return {"fid": float(fid.compute()), "kid": float(kid_mean)}
