"""Model families for the t2i task (ModelFamily), and Stable Diffusion 3: where the pipeline comes
from, its text encoding, and the velocity model (FLUX.1: rlzoo.tasks.t2i.flux; Z-Image:
rlzoo.tasks.t2i.z_image).

A model config names a *source* (cheap to build; nothing is loaded until `pipeline()`):
- `SD3Local` (`model=sd35m`): a local diffusers directory or a hub id already in the local cache,
  loaded with `local_files_only=True` — it never downloads.
- `SD3Tiny` (`model=sd3_tiny`): the same classes (SD3Transformer2DModel in its SD3.5 variant with
  dual attention and qk-norm, AutoencoderKL, two CLIP text encoders with projection, a T5 encoder,
  their tokenizers) with random weights from small configs and a fixed seed; nothing from the hub.

`SD3Velocity` is the policy's velocity model v(x_t, sigma, cond) on VAE latents: the transformer
with the prompt embeddings of the conditioning. In the rectified-flow convention x_t = (1-t)x0 + tε
SD3's transformer predicts ε − x0, which is rlzoo's velocity as it is.
"""
from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rlzoo.types import Conditioning

if TYPE_CHECKING:  # (diffusers is imported where a model is built, not with this module)
    from diffusers import AutoencoderKL


class FamilyVelocity(nn.Module):
    """rlzoo's velocity v(x_t, sigma, cond) = ε − x0 on (C, H, W) latents, from a family's transformer
    (which `model.lora` adapts); each family's subclass calls it as its pipeline does."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def lora_module(self) -> nn.Module:
        return self.transformer


def tiny_vae(latent_channels: int, vae_channels: tuple[int, ...], image_size: int, shift_factor: float,
             scaling_factor: float) -> AutoencoderKL:
    """A small AutoencoderKL (one block a halving, one layer each) with a family's latent constants,
    for the tiny and random configurations."""
    from diffusers import AutoencoderKL

    blocks = len(vae_channels)
    config: dict[str, Any] = dict(  # (diffusers annotates the block tuples as 1-tuples)
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=vae_channels,
        layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, sample_size=image_size, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=shift_factor, scaling_factor=scaling_factor)
    return AutoencoderKL(**config)


class SD3Velocity(FamilyVelocity):
    """v(x_t, sigma, cond) = SD3 transformer(x_t, timestep = 1000·sigma, prompt embeds, pooled)."""

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        timestep = (sigma.to(x.dtype) * 1000).expand(x.shape[0])  # SD3: t in [0, 1000]
        embeds, pooled = cond.inputs["prompt_embeds"], cond.inputs["pooled_prompt_embeds"]
        v = self.transformer(hidden_states=x.to(dtype), encoder_hidden_states=embeds.to(dtype),
                             pooled_projections=pooled.to(dtype), timestep=timestep.to(dtype),
                             return_dict=False)[0]
        return v.float() if x.dtype == torch.float32 else v.to(x.dtype)


class ModelFamily:
    """A model family (SD3, FLUX.1, ...): everything about a text-to-image pipeline that differs
    between families, so that samplers, estimators, objectives, rewards and the trainer never
    know which one they run. A model config names a configuration of one (`_target_`): cheap to
    build, nothing is loaded until `pipeline()`.

    - `key`: the weights, in the text-embedding cache's key (with `family`);
    - `check()`: ValueError (one line) when the weights are not there; loads nothing;
    - `pipeline()`: the family's diffusers pipeline (local files only: never a download);
    - `encode(pipe, prompts, device)`: the conditioning inputs of each prompt, cached per prompt;
    - `velocity_model(pipe)`: rlzoo's v(x_t, sigma, cond) on (C, H, W) latents, ε − x0;
    - `latent_shape(pipe)`: (C, H, W) of a sample;
    - `transformer_class()` and `transformer_config()`: the module names LoRA targets are
      checked against, from a transformer built on the meta device.
    The VAE decodes z / scaling_factor + shift_factor for every family (rlzoo.tasks.t2i)."""

    family: str = "?"
    attention_backends = False  # whether its transformer's attention dispatches through diffusers'
    # attention backends, so that model.attention_backend means something (FLUX.1, Z-Image; not SD3)
    max_sequence_length: int = 256  # T5 tokens per prompt
    # what `encode` gives each prompt, cached: the text encoder's sequence and a pooled vector (SD3, FLUX.1)
    inputs: tuple[str, ...] = ("prompt_embeds", "pooled_prompt_embeds")

    @property
    def key(self) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ValueError (one line) when the weights are not there; loads nothing."""

    def transformer_class(self):
        raise NotImplementedError

    def transformer_config(self) -> dict:
        raise NotImplementedError

    def pipeline(self):
        raise NotImplementedError

    def encode(self, pipe, prompts: list[str], device) -> dict[str, Tensor]:
        raise NotImplementedError

    def velocity_model(self, pipe) -> nn.Module:
        raise NotImplementedError

    def latent_shape(self, pipe) -> tuple[int, int, int]:
        raise NotImplementedError

    def module_names(self) -> list[str]:
        """Names of the transformer's submodules (LoRA targets are checked against them), from a
        transformer built on the meta device: no weights, no memory."""
        with torch.device("meta"):
            transformer = self.transformer_class().from_config(self.transformer_config())
        return [n for n, _ in transformer.named_modules()]  # pyright: ignore[reportAttributeAccessIssue] (a model)


class SD3Source(ModelFamily):
    """What SD3's pipelines share: two CLIP encoders (pooled) and T5, timestep 1000·sigma."""

    family = "sd3"

    def transformer_class(self):
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def encode(self, pipe, prompts: list[str], device) -> dict[str, Tensor]:
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, device=device, do_classifier_free_guidance=False,
                                                  max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def velocity_model(self, pipe) -> nn.Module:
        return SD3Velocity(pipe.transformer)

    def latent_shape(self, pipe) -> tuple[int, int, int]:
        size = pipe.transformer.config.sample_size
        return pipe.transformer.config.in_channels, size, size


class LocalPipeline(ModelFamily):
    """A family's pipeline from a local diffusers directory (or a hub id already in the local
    cache), loaded with `local_files_only=True`: it never downloads. A subclass names its pipeline
    class and the hub repository users fetch (for the one-line refusal that says how)."""

    path: str | None = None
    text_encoder_dtype: str = "bfloat16"
    repository: str = "?"  # the hub repository to fetch
    text_encoders: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"local:{self.path}"

    def pipeline_class(self):
        raise NotImplementedError

    def resolved(self) -> str:
        """A directory path, or the snapshot of a hub id in the local cache; else ValueError."""
        how = (f"fetch the weights on a machine with network access (`hf download {self.repository} --local-dir "
               f"DIR`, after accepting the licence on the hub), copy DIR here and pass model.path=DIR")
        from rlzoo.tasks.base import resolve_weights

        path = resolve_weights(self.path, "model.path", how, kind="directory")
        if not (Path(path) / "model_index.json").exists():
            raise ValueError(f"model.path={self.path!r} is not a diffusers pipeline directory "
                             f"(no model_index.json); {how}")
        return path

    def check(self) -> None:
        self.resolved()

    def transformer_config(self) -> dict:
        config = self.transformer_class().load_config(self.resolved(), subfolder="transformer", local_files_only=True)
        return dict(config)  # (a dict without return_unused_kwargs)

    def pipeline(self):
        pipe = self.pipeline_class().from_pretrained(self.resolved(), local_files_only=True)
        dtype = getattr(torch, self.text_encoder_dtype)
        for name in self.text_encoders:  # they run once per prompt (cached), then are released
            encoder = getattr(pipe, name, None)
            if encoder is not None:
                encoder.to(dtype)
        return pipe


class SD3Local(LocalPipeline, SD3Source):
    """A diffusers SD3 directory (or a hub id in the local cache), e.g. SD3.5-Medium."""

    repository = "stabilityai/stable-diffusion-3.5-medium"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")

    def __init__(self, path: str | None, text_encoder_dtype: str = "bfloat16", max_sequence_length: int = 256):
        self.path = path
        self.text_encoder_dtype = text_encoder_dtype
        self.max_sequence_length = int(max_sequence_length)

    def pipeline_class(self):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline


def _char_vocabulary() -> list[str]:
    return [c for c in string.printable if not c.isspace()]


def char_clip_tokenizer(max_length: int):
    """A CLIPTokenizer over single characters (no merges): every prompt tokenizes, nothing is
    downloaded. For the tiny models only."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _char_vocabulary():
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def char_t5_tokenizer(max_length: int):
    """A T5 (unigram) tokenizer over single characters, for the tiny models only."""
    from transformers import T5TokenizerFast  # pyright: ignore[reportAttributeAccessIssue] (a lazy export)

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(c, -2.0) for c in _char_vocabulary()]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


class SD3Tiny(SD3Source):
    """SD3.5's classes at toy size with random weights (seeded), for tests and CPU smoke runs.
    Images are `image_size` pixels; the VAE halves them per extra block; tokenizers work on
    characters (so any prompt tokenizes)."""

    def __init__(self, seed: int = 0, image_size: int = 32, latent_channels: int = 4,
                 vae_channels: Sequence[int] = (8, 8), num_layers: int = 2, num_attention_heads: int = 2,
                 attention_head_dim: int = 8, text_dim: int = 16, joint_attention_dim: int = 32,
                 max_sequence_length: int = 64, dual_attention_layers: Sequence[int] = (0,),
                 pos_embed_max_size: int | None = None, caption_projection_dim: int | None = None):
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.latent_channels = int(latent_channels)
        self.vae_channels = tuple(int(c) for c in vae_channels)
        self.num_layers, self.num_attention_heads = int(num_layers), int(num_attention_heads)
        self.attention_head_dim = int(attention_head_dim)
        self.text_dim, self.joint_attention_dim = int(text_dim), int(joint_attention_dim)
        self.max_sequence_length = int(max_sequence_length)
        self.dual_attention_layers = tuple(int(i) for i in dual_attention_layers)
        if any(not 0 <= i < self.num_layers for i in self.dual_attention_layers):
            raise ValueError(f"model.dual_attention_layers {list(self.dual_attention_layers)} must be block numbers "
                             f"in 0..{self.num_layers - 1}")
        self.pos_embed_max_size = None if pos_embed_max_size is None else int(pos_embed_max_size)
        self.caption_projection_dim = None if caption_projection_dim is None else int(caption_projection_dim)
        if 2 * self.text_dim > self.joint_attention_dim:
            raise ValueError("sd3_tiny: the two CLIP hidden sizes (2·text_dim) must fit in joint_attention_dim")

    @property
    def key(self) -> str:
        return "tiny:" + ",".join(f"{k}={v}" for k, v in sorted(vars(self).items()))

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def transformer_config(self) -> dict:
        return dict(sample_size=self.latent_size, patch_size=2, in_channels=self.latent_channels,
                    out_channels=self.latent_channels, num_layers=self.num_layers,
                    attention_head_dim=self.attention_head_dim, num_attention_heads=self.num_attention_heads,
                    joint_attention_dim=self.joint_attention_dim,
                    caption_projection_dim=self.caption_projection_dim or self.attention_head_dim * self.num_attention_heads,
                    pooled_projection_dim=2 * self.text_dim,
                    pos_embed_max_size=self.pos_embed_max_size or self.latent_size // 2,
                    dual_attention_layers=self.dual_attention_layers, qk_norm="rms_norm")

    def tokenizers(self):
        return char_clip_tokenizer(self.max_sequence_length), char_t5_tokenizer(self.max_sequence_length)

    def pipeline(self):
        from diffusers import (
            FlowMatchEulerDiscreteScheduler,
            SD3Transformer2DModel,
            StableDiffusion3Pipeline,
        )
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

        clip_tokenizer, t5_tokenizer = self.tokenizers()
        torch.manual_seed(self.seed)
        transformer = SD3Transformer2DModel(**self.transformer_config())
        vae = tiny_vae(self.latent_channels, self.vae_channels, self.image_size, 0.0609, 1.5035)  # (SD3's constants)
        clip_config: dict[str, Any] = dict(hidden_size=self.text_dim, intermediate_size=2 * self.text_dim, num_hidden_layers=2,
                           num_attention_heads=2, vocab_size=len(clip_tokenizer), projection_dim=self.text_dim,
                           max_position_embeddings=self.max_sequence_length, bos_token_id=0, eos_token_id=1,
                           pad_token_id=1, hidden_act="gelu")
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**clip_config))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_config))
        t5_config: dict[str, Any] = dict(
            d_model=self.joint_attention_dim, d_kv=8, d_ff=2 * self.joint_attention_dim, num_layers=2,
            num_heads=4, vocab_size=len(t5_tokenizer), relative_attention_num_buckets=8,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        text_encoder_3 = T5EncoderModel(T5Config(**t5_config))
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        for module in (transformer, vae, text_encoder, text_encoder_2, text_encoder_3):
            module.eval()
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
            tokenizer=clip_tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer,
            text_encoder_3=text_encoder_3, tokenizer_3=t5_tokenizer)
