"""FLUX.1 for the t2i task: where the pipeline comes from, its text encoding, and the velocity model.

What differs from SD3 (rlzoo.tasks.t2i.model), all kept here so that samplers, estimators and
objectives stay family-agnostic:
- the transformer sees the latents *packed*: each 2×2 patch of the (C, H, W) latent becomes one
  token of 4C channels, with position ids (0, row, column); rlzoo keeps the latents unpacked, as
  (C, H, W), and `FluxVelocity` packs on the way in and unpacks on the way out (a permutation, so
  every sampler step is the same on either layout);
- its timestep is sigma itself (FluxPipeline passes t / 1000 with t = 1000·sigma);
- FLUX.1-dev is guidance-distilled: the guidance scale is an input of the transformer
  (`model.guidance`, FluxPipeline's `guidance_scale`, 3.5), not a second forward; schnell has no
  guidance embedding (`model.guidance: null`);
- its text conditioning is T5's sequence (`prompt_embeds`) and CLIP's pooled output, with text ids
  of zeros.
In the rectified-flow convention x_t = (1-t)x0 + tε the transformer predicts ε − x0, rlzoo's
velocity as it is (the oracle test checks it against FluxPipeline's own sampling loop).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rlzoo.tasks.t2i.model import (
    FamilyVelocity,
    LocalPipeline,
    ModelFamily,
    char_clip_tokenizer,
    char_t5_tokenizer,
    tiny_vae,
)
from rlzoo.types import Conditioning


def pack(latents: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H/2·W/2, 4C): FluxPipeline._pack_latents's layout."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, height: int, width: int) -> Tensor:
    """(B, H/2·W/2, 4C) -> (B, C, H, W), the inverse of `pack`."""
    b, _, channels = tokens.shape
    x = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device, dtype) -> Tensor:
    """(H/2·W/2, 3) position ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxVelocity(FamilyVelocity):
    """v(x_t, sigma, cond) = unpack(FLUX transformer(pack(x_t), timestep = sigma, guidance, T5 embeds,
    CLIP pooled, ids))."""

    def __init__(self, transformer: nn.Module, guidance: float | None = None):
        super().__init__(transformer)
        embeds_guidance = bool(getattr(transformer.config, "guidance_embeds", False))
        if embeds_guidance and guidance is None:
            raise ValueError("this FLUX transformer embeds a guidance scale (FLUX.1-dev): set model.guidance "
                             "(FluxPipeline's default 3.5)")
        if not embeds_guidance and guidance is not None:
            raise ValueError(f"model.guidance={guidance}: this FLUX transformer has no guidance embedding "
                             f"(FLUX.1-schnell); use model.guidance=null")
        self.guidance = guidance

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        height, width = x.shape[-2:]
        embeds, pooled = cond.inputs["prompt_embeds"], cond.inputs["pooled_prompt_embeds"]
        guidance = None if self.guidance is None else torch.full((x.shape[0],), self.guidance, device=x.device,
                                                                  dtype=torch.float32)
        v = self.transformer(hidden_states=pack(x).to(dtype), timestep=sigma.to(x.dtype).expand(x.shape[0]).to(dtype),
                             guidance=guidance, pooled_projections=pooled.to(dtype),
                             encoder_hidden_states=embeds.to(dtype),
                             txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype),
                             img_ids=image_ids(height, width, x.device, dtype), return_dict=False)[0]
        v = unpack(v, height, width)
        return v.float() if x.dtype == torch.float32 else v.to(x.dtype)


class FluxFamily(ModelFamily):
    """What FLUX.1's pipelines share (rlzoo.tasks.t2i.model.ModelFamily)."""

    family = "flux"
    attention_backends = True  # (its processors take diffusers' backend: model.attention_backend)
    guidance: float | None = None  # FLUX.1-dev's distilled guidance scale (None: schnell, no embedding)
    image_size: int = 1024  # pixels of a sample (FLUX.1 generates at any multiple of 16)

    def check_schedule(self, schedule: dict | None, vae_scale_factor: int) -> None:
        """`model.schedule` (task=t2i hands it to the sampler: rlzoo.samplers.schedule.PipelineSchedule)
        must count the tokens these samples pack into, as FluxPipeline does."""
        tokens = (self.image_size // vae_scale_factor // 2) ** 2
        given = (schedule or {}).get("image_seq_len")
        if schedule is not None and given != tokens:
            raise ValueError(f"model.schedule.image_seq_len={given}, but {self.image_size}-pixel samples pack into "
                             f"{tokens} latent tokens (FluxPipeline's shift reads that count); use "
                             f"model.schedule.image_seq_len={tokens}")

    def transformer_class(self):
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def encode(self, pipe, prompts: list[str], device) -> dict[str, Tensor]:
        embeds, pooled, _ = pipe.encode_prompt(prompts, None, device=device,
                                               max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def velocity_model(self, pipe) -> nn.Module:
        return FluxVelocity(pipe.transformer, self.guidance)

    def latent_shape(self, pipe) -> tuple[int, int, int]:
        channels = pipe.transformer.config.in_channels // 4  # (the packed tokens carry 2×2 patches)
        size = self.image_size // pipe.vae_scale_factor
        return channels, size, size


class FluxTiny(FluxFamily):
    """FLUX.1's classes at toy size with random weights (seeded), for tests and CPU smoke runs:
    FluxTransformer2DModel (double- and single-stream blocks, rotary position ids), AutoencoderKL,
    a CLIP text encoder (pooled) and a T5 encoder, their tokenizers over characters. `guidance`
    set: a guidance embedding, as FLUX.1-dev; null: none, as FLUX.1-schnell."""

    def __init__(self, seed: int = 0, image_size: int = 32, latent_channels: int = 4,
                 vae_channels: Sequence[int] = (8, 8), num_layers: int = 1, num_single_layers: int = 1,
                 num_attention_heads: int = 2, attention_head_dim: int = 8, axes_dims_rope: Sequence[int] = (2, 2, 4),
                 text_dim: int = 16, joint_attention_dim: int = 32, max_sequence_length: int = 64,
                 guidance: float | None = 3.5, schedule: dict | None = None):
        self.seed, self.image_size, self.latent_channels = int(seed), int(image_size), int(latent_channels)
        self.vae_channels = tuple(int(c) for c in vae_channels)
        self.num_layers, self.num_single_layers = int(num_layers), int(num_single_layers)
        self.num_attention_heads, self.attention_head_dim = int(num_attention_heads), int(attention_head_dim)
        self.axes_dims_rope = tuple(int(a) for a in axes_dims_rope)
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"model.axes_dims_rope {list(self.axes_dims_rope)} must sum to model.attention_head_dim="
                             f"{self.attention_head_dim} (the rotary embedding covers each head)")
        self.text_dim, self.joint_attention_dim = int(text_dim), int(joint_attention_dim)
        self.max_sequence_length = int(max_sequence_length)
        self.guidance = None if guidance is None else float(guidance)
        if (self.image_size // 2 ** (len(self.vae_channels) - 1)) % 2:
            raise ValueError(f"model.image_size={self.image_size}: FLUX packs 2×2 latent patches, so the latent "
                             f"size (image_size / {2 ** (len(self.vae_channels) - 1)}) must be even")
        self.check_schedule(schedule, 2 ** (len(self.vae_channels) - 1))

    @property
    def key(self) -> str:
        return "tiny:" + ",".join(f"{k}={v}" for k, v in sorted(vars(self).items()))

    def transformer_config(self) -> dict:
        return dict(patch_size=1, in_channels=4 * self.latent_channels, num_layers=self.num_layers,
                    num_single_layers=self.num_single_layers, attention_head_dim=self.attention_head_dim,
                    num_attention_heads=self.num_attention_heads, joint_attention_dim=self.joint_attention_dim,
                    pooled_projection_dim=self.text_dim, guidance_embeds=self.guidance is not None,
                    axes_dims_rope=self.axes_dims_rope)

    def pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        clip_tokenizer = char_clip_tokenizer(77)  # (FluxPipeline reads CLIP's 77 tokens for the pooled output)
        t5_tokenizer = char_t5_tokenizer(self.max_sequence_length)
        torch.manual_seed(self.seed)
        transformer = FluxTransformer2DModel(**self.transformer_config())
        vae = tiny_vae(self.latent_channels, self.vae_channels, self.image_size, 0.1159, 0.3611)  # (FLUX.1's constants)
        clip_config: dict[str, Any] = dict(
            hidden_size=self.text_dim, intermediate_size=2 * self.text_dim, num_hidden_layers=2, num_attention_heads=2,
            vocab_size=len(clip_tokenizer), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
            pad_token_id=1, hidden_act="gelu")
        text_encoder = CLIPTextModel(CLIPTextConfig(**clip_config))
        t5_config: dict[str, Any] = dict(
            d_model=self.joint_attention_dim, d_kv=8, d_ff=2 * self.joint_attention_dim, num_layers=2, num_heads=4,
            vocab_size=len(t5_tokenizer), relative_attention_num_buckets=8, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1)
        text_encoder_2 = T5EncoderModel(T5Config(**t5_config))
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
        for module in (transformer, vae, text_encoder, text_encoder_2):
            module.eval()
        return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer,
                            text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer, transformer=transformer)


class FluxLocal(LocalPipeline, FluxFamily):
    """A diffusers FLUX.1 directory (or a hub id in the local cache): FLUX.1-dev (`guidance` 3.5)
    or FLUX.1-schnell (`guidance` null), sampled at `image_size` pixels."""

    text_encoders = ("text_encoder", "text_encoder_2")

    def __init__(self, path: str | None, repository: str = "black-forest-labs/FLUX.1-dev", image_size: int = 512,
                 guidance: float | None = 3.5, schedule: dict | None = None, text_encoder_dtype: str = "bfloat16",
                 max_sequence_length: int = 512):
        self.path, self.repository, self.image_size = path, repository, int(image_size)
        if self.image_size % 16:
            raise ValueError(f"model.image_size={image_size}: FLUX.1's VAE (1/8) and its 2×2 packing need a "
                             f"multiple of 16")
        self.guidance = None if guidance is None else float(guidance)
        self.text_encoder_dtype, self.max_sequence_length = text_encoder_dtype, int(max_sequence_length)
        self.schedule = schedule

    def check(self) -> None:
        """The directory is a pipeline, and `model.schedule` counts the tokens its VAE's latents pack into."""
        from diffusers import AutoencoderKL

        super().check()
        vae = AutoencoderKL.load_config(self.resolved(), subfolder="vae", local_files_only=True)
        self.check_schedule(self.schedule, 2 ** (len(dict(vae)["block_out_channels"]) - 1))  # pyright: ignore[reportArgumentType, reportCallIssue] (a dict)

    def pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline
