"""toy2d: a conditional 2-D flow with a verifiable reward that the base model meets ~30% of the time.

A prompt is an angle θ. The base model's data puts a point in the prompt's *target* region
(radius 2 at angle θ) with probability `p_target`, and in one of two distractor modes at θ ± 120°
otherwise. The reward is 1 when the sample lies within `hit_radius` of the target centre, so RL
has room (≈0.7) and signal (≈30% hits per group). RL trains on angles k·30°; the held-out prompts
are the angles half-way between them, so a gain there is a gain of the conditional field, not of
a memorised prompt.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from rlzoo.tasks.base import Task, checked_eval_rewards
from rlzoo.types import Conditioning


def fourier(x: Tensor, num: int) -> Tensor:
    """(B,) -> (B, 2·num) sinusoidal features at frequencies 1..num (·π)."""
    freqs = torch.arange(1, num + 1, dtype=x.dtype, device=x.device) * math.pi
    return torch.cat([torch.sin(x[:, None] * freqs), torch.cos(x[:, None] * freqs)], dim=1)


class Toy2DVelocity(nn.Module):
    """MLP velocity field v(x_t, sigma, θ) for 2-D points."""

    def __init__(self, hidden: int = 128, depth: int = 3, time_features: int = 8, angle_harmonics: int = 3):
        super().__init__()
        self.time_features, self.angle_harmonics = time_features, angle_harmonics
        width = 2 + 2 * time_features + 2 * angle_harmonics
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        theta = cond.inputs["angle"].to(x.dtype)
        k = torch.arange(1, self.angle_harmonics + 1, dtype=x.dtype, device=x.device)
        angle = torch.cat([torch.cos(theta[:, None] * k), torch.sin(theta[:, None] * k)], dim=1)
        time = fourier(sigma.to(x.dtype).expand(x.shape[0]), self.time_features)
        return self.net(torch.cat([x, time, angle], dim=1))


class Toy2DTask(Task):
    name = "toy2d"
    sample_shape = (2,)
    pretrain_command = "rlzoo-pretrain task=toy2d"
    has_verifier = True

    def __init__(self, radius: float = 2.0, mode_std: float = 0.3, p_target: float = 0.3,
                 hit_radius: float = 0.8, num_train_angles: int = 12, eval_rewards: dict | None = None):
        from rlzoo.ranges import check

        # (the pretrained base model learnt radius 2, std 0.3 and p 0.3: other values move the target)
        self.radius = check("task.radius", radius, 0, low_open=True)
        self.mode_std = check("task.mode_std", mode_std, 0, low_open=True)
        self.p_target = check("task.p_target", p_target, 0, 1, low_open=True, high_open=True)
        self.hit_radius = check("task.hit_radius", hit_radius, 0, low_open=True)
        num_train_angles = check("task.num_train_angles", num_train_angles, 1, integer=True)
        self.extra_eval_rewards = checked_eval_rewards(eval_rewards, ("reward", "verifier", "hit", "distance", "nll", "fd_data", "sw_data",
                                                                         "fd_teacher", "sw_teacher"))
        step = 360 / num_train_angles
        self._train = [f"angle {step * k:g}" for k in range(num_train_angles)]
        self._heldout = [f"angle {step * k + step / 2:g}" for k in range(num_train_angles)]

    def train_prompts(self) -> list[str]:
        return self._train

    def heldout_prompts(self) -> list[str]:
        return self._heldout

    @staticmethod
    def angle_of(prompt: str) -> float:
        return math.radians(float(prompt.split()[-1]))

    def conditioning(self, prompts, prompt_ids, group_ids) -> Conditioning:
        angles = torch.tensor([self.angle_of(p) for p in prompts], dtype=torch.float32)
        return Conditioning(prompts=list(prompts), inputs={"angle": angles},
                            prompt_ids=prompt_ids, group_ids=group_ids)

    def target(self, angle: Tensor) -> Tensor:
        return self.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def score(self, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        angle = cond.inputs["angle"].to(x0.device).float()
        distance = (x0.float() - self.target(angle)).norm(dim=1)
        hit = (distance < self.hit_radius).float()
        return {"reward": hit, "hit": hit, "distance": distance, "nll": -self.log_density(x0.float(), angle)}

    # The data distribution in closed form: per angle θ, three Gaussians (std mode_std) at the
    # target (weight p_target) and at θ ± 120° (weight (1 - p_target)/2 each).
    MODE_OFFSETS = (0.0, 2 * math.pi / 3, -2 * math.pi / 3)

    def log_density(self, x: Tensor, angle: Tensor) -> Tensor:
        """log p_data(x | θ), (B, 2), (B,) -> (B,)."""
        weights = torch.tensor([self.p_target, (1 - self.p_target) / 2, (1 - self.p_target) / 2],
                               dtype=x.dtype, device=x.device)
        centres = torch.stack([self.target(angle + o) for o in self.MODE_OFFSETS], dim=1).to(x.dtype)  # (B, 3, 2)
        sq = (x[:, None, :] - centres).square().sum(-1)
        log_normal = -sq / (2 * self.mode_std**2) - math.log(2 * math.pi * self.mode_std**2)
        return torch.logsumexp(weights.log() + log_normal, dim=1)

    def sample_data(self, angle: Tensor, generator: torch.Generator) -> Tensor:
        """Points of the data distribution at the given angles."""
        u = torch.rand(angle.shape[0], generator=generator)
        offset = torch.where(u < self.p_target, 0.0,
                             torch.where(u < (1 + self.p_target) / 2, self.MODE_OFFSETS[1], self.MODE_OFFSETS[2]))
        return self.target(angle + offset) + self.mode_std * torch.randn(angle.shape[0], 2, generator=generator)

    def sample_metrics(self, x0: Tensor, prompt_ids: Tensor, teacher: Tensor | None = None) -> dict[str, float]:
        """Distances of the samples, per held-out angle and averaged over angles, to the data
        distribution (as many fresh data points as samples, a fixed seed) and, when given, to the
        teacher's samples: Fréchet (fd_data, fd_teacher) and sliced Wasserstein-2 (sw_data,
        sw_teacher). The exact per-sample likelihood is `nll` in the scores."""
        from rlzoo.distances import frechet_distance, sliced_wasserstein

        generator = torch.Generator().manual_seed(0)
        distances: dict[str, list[float]] = {}
        for i in sorted(set(prompt_ids.tolist())):
            rows = prompt_ids == i
            points = x0[rows].float().cpu()
            angle = torch.full((len(points),), self.angle_of(self._heldout[i]))
            references = {"data": self.sample_data(angle, generator)}
            if teacher is not None:
                references["teacher"] = teacher[rows].float().cpu()
            for name, reference in references.items():
                if len(points) > 2:  # a covariance needs a few points (debug runs have one per angle)
                    distances.setdefault(f"fd_{name}", []).append(float(frechet_distance(points, reference)))
                distances.setdefault(f"sw_{name}", []).append(
                    float(sliced_wasserstein(points, reference, projections=64, generator=generator)))
        return {key: sum(values) / len(values) for key, values in distances.items()}

    def pretrain_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Conditioning]:
        """Data of the base model: any angle; target mode with probability p_target."""
        angle = torch.rand(batch_size, generator=generator) * 2 * math.pi
        x0 = self.sample_data(angle, generator)
        prompts = [f"angle {math.degrees(a):.3f}" for a in angle.tolist()]
        ids = torch.zeros(batch_size, dtype=torch.long)
        return x0, self.conditioning(prompts, ids, ids)

    def save_grid(self, x0: Tensor, cond: Conditioning, path: Path) -> None:
        """Scatter plot of the sample cloud, coloured by prompt, with the target discs. (A bare
        Figure with fixed margins and ticks: pyplot's state and tight_layout took most of a debug
        run's time.)"""
        from matplotlib import cm
        from matplotlib.figure import Figure
        from matplotlib.patches import Circle

        from rlzoo.runs.files import atomic_write_bytes

        fig = Figure(figsize=(4, 4), dpi=100)
        ax = fig.add_axes((0.12, 0.1, 0.83, 0.8))
        angles = cond.inputs["angle"].cpu()
        ax.scatter(x0[:, 0].numpy(), x0[:, 1].numpy(), s=4, c=cm.hsv((angles / (2 * math.pi)).numpy()), alpha=0.6)
        for a in sorted(set(angles.tolist())):
            c = self.target(torch.tensor([a]))[0]
            ax.add_patch(Circle((float(c[0]), float(c[1])), self.hit_radius, fill=False,
                                color=cm.hsv(a / (2 * math.pi)), lw=1))
        ax.set_xlim(-3.2, 3.2)
        ax.set_ylim(-3.2, 3.2)
        ax.set_aspect("equal")
        ax.set_xticks(range(-3, 4))
        ax.set_yticks(range(-3, 4))
        hit = self.score(x0, cond)["hit"].mean()
        ax.set_title(f"{path.stem}: held-out hit rate {float(hit):.2f}", fontsize=9)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write_bytes(Path(path), buffer.getvalue())
