"""Image reward models (t2i): PickScore, CLIP score, HPSv2 and the LAION aesthetic predictor.

Each loads lazily, on its first call, from a local path (a directory, or a hub id already in the
local cache; never downloaded), or — with `tiny=true` — builds a small random model of the same
classes from config with a fixed seed, for tests and CPU smoke runs. Images reach them as (B, 3, H, W)
floats in [0, 1], are rounded to uint8 and go through the model's own CLIP image processor, as the
peers' scorers do (FlowGRPO's pickscore_scorer.py, clip_scorer.py, aesthetic_scorer.py).

Scales are the peers': PickScore = 100·cos/26 (FlowGRPO divides PickScore_v1's logit_scale·cos by 26
to bring it near [0, 1]); CLIP score = logit_scale·cos/30 (FlowGRPO); HPSv2 = cos (HPSv2's own
score: image·text features, normalised, no logit scale); aesthetic = the MLP's rating (about 1–10).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rlzoo.ranges import check
from rlzoo.rewards import Reward
from rlzoo.tasks.base import resolve_weights
from rlzoo.types import Conditioning


class ImageReward(Reward):
    """A reward on decoded images: the task decodes the samples once (`task.images`);
    `score_images` maps them (with the conditioning, and the task for prompt metadata) to
    {"reward": (B,), other per-sample scores}; `score` is the (B,) reward of (images, prompts)."""

    name = "image_reward"
    scores_images = True
    tiny = False  # a small random model of the same classes instead of released weights (where one is loaded)

    def __call__(self, task, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        return self.score_images(task.images(x0), cond, task)

    def score_images(self, images: Tensor, cond: Conditioning, task=None) -> dict[str, Tensor]:
        return {"reward": self.score(images, list(cond.prompts))}

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        raise NotImplementedError


def to_uint8_arrays(images: Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> B HxWx3 uint8 arrays (what the peers hand their processors)."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return [p.permute(1, 2, 0).cpu().numpy() for p in pixels]


def tiny_clip(seed: int, image_size: int = 32, dim: int = 16, projection_dim: int = 16):
    """(CLIPModel, CLIPProcessor) with random weights at toy size (char-level tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from rlzoo.tasks.t2i.model import char_clip_tokenizer

    tokenizer = char_clip_tokenizer(32)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=32, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    return model, processor


class CLIPReward(ImageReward):
    """scale·logit_scale^(use_logit_scale)·cos(image, text) of a CLIP model (transformers CLIPModel):
    PickScore, CLIP score and HPSv2 are this with their own weights and scale."""

    def __init__(self, path: str | None = None, processor_path: str | None = None, scale: float = 1.0,
                 use_logit_scale: bool = True, tiny: bool = False, seed: int = 0, batch_size: int = 32,
                 device: str | None = None, dtype: str = "float32", name: str = "clip"):
        self.path, self.processor_path = path, processor_path
        # a negative scale would make RL minimise the score (normalised advantages hide the sign)
        self.scale = float(check("reward.scale", scale, 0, low_open=True))
        self.use_logit_scale = bool(use_logit_scale)
        self.tiny, self.seed = bool(tiny), int(seed)
        self.batch_size = check("reward.batch_size", batch_size, 1, integer=True)
        self.device, self.dtype, self.name = device, getattr(torch, dtype), name
        self._model: Any = None

    def _how(self) -> str:
        return (f"download the {self.name} weights on a machine with network access (`hf download "
                f"<repo> --local-dir DIR`), copy DIR here and pass reward.path=DIR, or reward.tiny=true for the "
                f"random test model")

    def check(self) -> None:
        if not self.tiny:
            resolve_weights(self.path, "reward.path", self._how())
            if self.processor_path:
                resolve_weights(self.processor_path, "reward.processor_path", self._how())

    def load(self):
        if self._model is None:
            if self.tiny:
                model, processor = tiny_clip(self.seed)
            else:
                from transformers import CLIPModel, CLIPProcessor

                path = resolve_weights(self.path, "reward.path", self._how())
                model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
                processor = CLIPProcessor.from_pretrained(
                    resolve_weights(self.processor_path, "reward.processor_path", self._how())
                    if self.processor_path else path, local_files_only=True)
            model.requires_grad_(False)
            self._model, self._processor = model.to(self.dtype), processor
        return self._model, self._processor

    def _device(self, images: Tensor) -> torch.device:
        return torch.device(self.device) if self.device else images.device

    @torch.no_grad()
    def image_embeddings(self, images: Tensor) -> Tensor:
        """(B, D) CLIP image embeddings (float32, not normalised) of images in [0, 1]."""
        model, processor = self.load()
        device = self._device(images)
        model.to(device)
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = processor(images=to_uint8_arrays(images[start:start + self.batch_size]),
                               return_tensors="pt")["pixel_values"]
            out.append(_embedding(model.get_image_features(pixel_values=pixels.to(device, self.dtype))).float())
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str], device: torch.device) -> Tensor:
        model, processor = self.load()
        out = []
        for start in range(0, len(prompts), self.batch_size):
            text = processor(text=prompts[start:start + self.batch_size], padding=True, truncation=True,
                             return_tensors="pt")
            out.append(_embedding(model.get_text_features(**{k: v.to(device) for k, v in text.items()})).float())
        return torch.cat(out)

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        image = nn.functional.normalize(self.image_embeddings(images), dim=-1)
        text = nn.functional.normalize(self.text_embeddings(prompts, self._device(images)), dim=-1)
        logit = self._model.logit_scale.exp().float() if self.use_logit_scale else 1.0
        return (self.scale * logit * (image * text).sum(-1)).to(images.device)


def _embedding(output) -> Tensor:
    """get_*_features returns a tensor (transformers 4) or an output with `pooler_output` (5)."""
    return output if isinstance(output, Tensor) else output.pooler_output


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head (sac+logos+ava1-l14-linearMSE) on a normalised
    CLIP ViT-L/14 image embedding; dropout layers kept so its state dict loads as released."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embed: Tensor) -> Tensor:
        return self.layers(embed).squeeze(-1)


class AestheticReward(CLIPReward):
    """LAION aesthetic score: MLP(normalised CLIP ViT-L/14 image embedding); `mlp_path` is the
    released state dict (sac+logos+ava1-l14-linearMSE.pth). Prompts are not used."""

    def __init__(self, mlp_path: str | None = None, **kwargs):
        super().__init__(**{"name": "aesthetic", **kwargs})
        self.mlp_path = mlp_path

    def check(self) -> None:
        super().check()
        if not self.tiny:
            resolve_weights(self.mlp_path, "reward.mlp_path", self._how())

    def load(self):
        if self._model is None:
            model, processor = super().load()
            torch.manual_seed(self.seed + 1)  # the tiny head's random weights; a released one is loaded
            mlp = AestheticMLP(model.config.projection_dim)
            if not self.tiny:
                path = resolve_weights(self.mlp_path, "reward.mlp_path", self._how())
                mlp.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self._mlp = mlp.eval().requires_grad_(False)
        return self._model, self._processor

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        embed = nn.functional.normalize(self.image_embeddings(images), dim=-1)
        self._mlp.to(embed.device)
        return self._mlp(embed).to(images.device)
