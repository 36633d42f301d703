"""Z-Image for the t2i task (diffusers' ZImagePipeline): where the pipeline comes from, its text
encoding, and the velocity model. Chosen as the second family because it differs from SD3 and
FLUX.1 in every place the family adapter owns, and is small (6 B, one text encoder): a
single-stream DiT that takes lists of per-sample tensors, a decoder-only LLM (Qwen3) as text
encoder whose prompts keep their own lengths, a time axis that runs the other way, and a static
shift on FluxPipeline's base grid.

What differs, all kept here:
- the text conditioning is Qwen3's second-to-last hidden states over the chat-templated prompt,
  each prompt only its own tokens (no pooled vector); rlzoo caches them padded to
  `max_sequence_length` with their mask (`prompt_mask`) and hands the transformer each row's
  unpadded tokens, as the pipeline does;
- the transformer's time input is 1 − sigma (its t = 0 is pure noise) and it predicts x0 − ε, so
  rlzoo's velocity ε − x0 is its output negated (the pipeline negates it too);
- latents go in as a list of (C, 1, H, W) frames; guidance is true CFG, the pipeline's
  `guidance_scale` w being rlzoo's `cfg_scale` s = 1 + w (pos + w·(pos − neg));
- the schedule is a static shift on linspace(1, 1/K, K) (`model.schedule.shift`).
"""
from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rlzoo.tasks.t2i.model import FamilyVelocity, LocalPipeline, ModelFamily, tiny_vae
from rlzoo.types import Conditioning

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ZImageVelocity(FamilyVelocity):
    """v(x_t, sigma, cond) = −Z-Image transformer([x_t as (C, 1, H, W) frames], 1 − sigma, [each row's text tokens])."""

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        embeds, mask = cond.inputs["prompt_embeds"].to(dtype), cond.inputs["prompt_mask"].bool()
        frames = list(x.to(dtype).unsqueeze(2).unbind(0))
        timestep = (1 - sigma.to(x.dtype).expand(x.shape[0])).to(dtype)
        out = self.transformer(frames, timestep, [embeds[i][mask[i]] for i in range(len(frames))],
                               return_dict=False)[0]
        v = -torch.stack([o.float() for o in out]).squeeze(2)  # (its x0 − ε, turned into ε − x0)
        return v if x.dtype == torch.float32 else v.to(x.dtype)


class ZImageFamily(ModelFamily):
    """What Z-Image's pipelines share (rlzoo.tasks.t2i.model.ModelFamily)."""

    family = "z_image"
    attention_backends = True  # (its processors take diffusers' backend: model.attention_backend)
    inputs = ("prompt_embeds", "prompt_mask")
    image_size: int = 1024

    def transformer_class(self):
        from diffusers import ZImageTransformer2DModel

        return ZImageTransformer2DModel

    def encode(self, pipe, prompts: list[str], device) -> dict[str, Tensor]:
        """Each prompt's own tokens' hidden states (the pipeline's `encode_prompt`), padded to
        `max_sequence_length` rows with a mask of the real ones."""
        embeds, _ = pipe.encode_prompt(list(prompts), device=device, do_classifier_free_guidance=False,
                                       max_sequence_length=self.max_sequence_length)
        width = embeds[0].shape[-1]
        padded = torch.zeros(len(embeds), self.max_sequence_length, width, dtype=embeds[0].dtype, device=embeds[0].device)
        mask = torch.zeros(len(embeds), self.max_sequence_length, device=embeds[0].device)
        for i, e in enumerate(embeds):
            padded[i, :len(e)], mask[i, :len(e)] = e, 1.0
        return {"prompt_embeds": padded, "prompt_mask": mask}

    def velocity_model(self, pipe) -> nn.Module:
        return ZImageVelocity(pipe.transformer)

    def latent_shape(self, pipe) -> tuple[int, int, int]:
        size = 2 * (self.image_size // (pipe.vae_scale_factor * 2))  # (the pipeline's prepare_latents)
        return pipe.transformer.in_channels, size, size


def char_qwen_tokenizer(max_length: int):
    """A Qwen-style tokenizer over single characters with a chat template, for the tiny model only."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for c in [c for c in string.printable if not c.isspace()] + [" ", "\n"]:
        vocab.setdefault(c, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                        model_max_length=max_length, additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


class ZImageTiny(ZImageFamily):
    """Z-Image's classes at toy size with random weights (seeded), for tests and CPU smoke runs:
    ZImageTransformer2DModel (noise and context refiners, a single-stream stack), AutoencoderKL, a
    Qwen3 text encoder, a character-level tokenizer with a chat template."""

    def __init__(self, seed: int = 0, image_size: int = 32, latent_channels: int = 4, vae_channels: Sequence[int] = (8, 8),
                 dim: int = 32, num_layers: int = 1, num_refiner_layers: int = 1, num_heads: int = 2,
                 axes_dims: Sequence[int] = (4, 6, 6), text_dim: int = 32, max_sequence_length: int = 64,
                 schedule: dict | None = None):
        self.seed, self.image_size, self.latent_channels = int(seed), int(image_size), int(latent_channels)
        self.vae_channels = tuple(int(c) for c in vae_channels)
        self.dim, self.num_layers, self.num_refiner_layers = int(dim), int(num_layers), int(num_refiner_layers)
        self.num_heads, self.axes_dims = int(num_heads), tuple(int(a) for a in axes_dims)
        if sum(self.axes_dims) != self.dim // self.num_heads:
            raise ValueError(f"model.axes_dims {list(self.axes_dims)} must sum to the head width dim / num_heads = "
                             f"{self.dim // self.num_heads} (the rotary embedding covers each head)")
        self.text_dim, self.max_sequence_length = int(text_dim), int(max_sequence_length)
        self.schedule = schedule

    @property
    def key(self) -> str:
        return "tiny:" + ",".join(f"{k}={v}" for k, v in sorted(vars(self).items()))

    def transformer_config(self) -> dict:
        return dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=self.latent_channels, dim=self.dim,
                    n_layers=self.num_layers, n_refiner_layers=self.num_refiner_layers, n_heads=self.num_heads,
                    n_kv_heads=self.num_heads, cap_feat_dim=self.text_dim, axes_dims=list(self.axes_dims),
                    axes_lens=[self.max_sequence_length * 2, 64, 64])

    def pipeline(self):
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
        from transformers import Qwen3Config, Qwen3Model

        tokenizer = char_qwen_tokenizer(self.max_sequence_length)
        torch.manual_seed(self.seed)
        transformer = ZImageTransformer2DModel(**self.transformer_config())
        vae = tiny_vae(self.latent_channels, self.vae_channels, self.image_size, 0.1159, 0.3611)  # (FLUX.1's VAE)
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=self.text_dim, intermediate_size=2 * self.text_dim, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, head_dim=self.text_dim // 2,
            max_position_embeddings=2 * self.max_sequence_length))
        scheduler = FlowMatchEulerDiscreteScheduler(shift=float((self.schedule or {}).get("shift", 3.0)),
                                                    use_dynamic_shifting=False)
        for module in (transformer, vae, text_encoder):
            module.eval()
        parts: dict[str, Any] = dict(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                     transformer=transformer)  # (diffusers annotates the tokenizer as AutoTokenizer)
        return ZImagePipeline(**parts)


class ZImageLocal(LocalPipeline, ZImageFamily):
    """A diffusers Z-Image directory (or a hub id in the local cache), e.g. Z-Image-Turbo."""

    text_encoders = ("text_encoder",)

    def __init__(self, path: str | None, repository: str = "Tongyi-MAI/Z-Image-Turbo", image_size: int = 1024,
                 schedule: dict | None = None, text_encoder_dtype: str = "bfloat16", max_sequence_length: int = 512):
        self.path, self.repository, self.image_size = path, repository, int(image_size)
        if self.image_size % 16:
            raise ValueError(f"model.image_size={image_size}: Z-Image's VAE (1/8) and its 2×2 patches need a "
                             f"multiple of 16")
        self.schedule = schedule
        self.text_encoder_dtype, self.max_sequence_length = text_encoder_dtype, int(max_sequence_length)

    def pipeline_class(self):
        from diffusers import ZImagePipeline

        return ZImagePipeline
