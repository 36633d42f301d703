"""The shapes policy: a tiny word-level text encoder + a small diffusers SD3Transformer2DModel
(MMDiT) working directly in pixel space (no VAE)."""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from rlzoo.tasks.shapes.prompts import all_specs
from rlzoo.types import Conditioning

PAD = "<pad>"


@lru_cache(maxsize=None)
def vocabulary() -> tuple[str, ...]:
    words = sorted({w for specs in all_specs().values() for s in specs for w in s.text.split()})
    return (PAD, *words)


def tokenize(prompts: list[str], max_length: int) -> Tensor:
    """(B, max_length) word ids, right-padded."""
    index = {w: i for i, w in enumerate(vocabulary())}
    ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        words = prompt.split()
        if len(words) > max_length:
            raise ValueError(f"prompt {prompt!r} has more than {max_length} words")
        ids[b, :len(words)] = torch.tensor([index[w] for w in words])
    return ids


class TextEncoder(nn.Module):
    """Word embeddings + positions + a small transformer; returns (hidden (B, L, D), pooled (B, D))."""

    def __init__(self, dim: int, layers: int, heads: int, max_length: int):
        super().__init__()
        self.embed = nn.Embedding(len(vocabulary()), dim)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(self.embed(ids) + self.position[: ids.shape[1]])
        mask = (ids != 0).float()[..., None]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        return hidden, pooled


class ShapesPolicyModel(nn.Module):
    """v(x_t, sigma, prompt) for (B, 3, H, W) images. The text encoder is frozen during RL."""

    def __init__(self, image_size: int = 24, patch_size: int = 4, num_layers: int = 4,
                 num_attention_heads: int = 2, attention_head_dim: int = 32, text_dim: int = 64,
                 text_layers: int = 2, text_heads: int = 4, max_length: int = 8):
        super().__init__()
        from diffusers import SD3Transformer2DModel

        self.max_length = max_length
        self.encodings: dict = {}  # encode_prompts' kept outputs (a plain attribute: not in the state_dict)
        self.text_encoder = TextEncoder(text_dim, text_layers, text_heads, max_length)
        self.transformer = SD3Transformer2DModel(
            sample_size=image_size, patch_size=patch_size, in_channels=3, out_channels=3,
            num_layers=num_layers, attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads, joint_attention_dim=text_dim,
            caption_projection_dim=attention_head_dim * num_attention_heads,
            pooled_projection_dim=text_dim, pos_embed_max_size=image_size // patch_size)

    KEPT_ENCODINGS = 16  # prompt batches whose encoding is kept (a rollout's, and its micro-batches')

    def encode_prompts(self, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """The text encoder's (hidden, pooled) for `cond`'s prompts. Frozen during RL, it gives the
        same output for the same prompt batch every time: a rollout's K steps and an update's
        likelihood terms would encode it again and again. So the output is kept per prompt batch,
        as t2i keeps its embeddings, and computed once by each view (each module: old, current,
        reference), in the same call as before, so every number stays as it was. Keyed by the
        prompts (a prompt's tokens are a function of its text; guidance's empty prompt is ""), the
        module's mode (train/eval pick different attention kernels), autocast, the device and dtype
        of the tokens and weights (`.to()` does not bump versions), and the encoder's weight
        versions (a loaded state_dict bumps them); not kept while the encoder trains (rlzoo-pretrain)."""
        params = list(self.text_encoder.parameters())
        if any(p.requires_grad for p in params):
            return self.text_encoder(cond.inputs["tokens"])
        tokens = cond.inputs["tokens"]
        key = (tuple(cond.prompts), tuple(tokens.shape), self.text_encoder.training,
               torch.is_autocast_enabled(tokens.device.type), tokens.device, params[0].device, params[0].dtype,
               tuple(p._version for p in params))
        kept = self.encodings
        if key not in kept:
            if len(kept) >= self.KEPT_ENCODINGS:
                kept.pop(next(iter(kept)))  # the oldest
            kept[key] = self.text_encoder(tokens)
        return kept[key]

    def trainable_parameters(self):
        return self.transformer.parameters()

    def lora_module(self) -> nn.Module:  # model.lora adapts the MMDiT, as on SD3.5
        return self.transformer

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        hidden, pooled = self.encode_prompts(cond)
        timestep = (sigma.to(x.dtype) * 1000).expand(x.shape[0])  # SD3 convention: t in [0, 1000]
        return self.transformer(hidden_states=x, encoder_hidden_states=hidden, pooled_projections=pooled,
                                timestep=timestep, return_dict=False)[0]
