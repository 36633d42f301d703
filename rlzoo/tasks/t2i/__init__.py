"""t2i: text-to-image with a model family's pipeline (SD3: SD3.5-Medium or `sd3_tiny` on CPU;
FLUX.1: `flux_tiny`; Z-Image: `z_image_tiny`), the family adapted by rlzoo.tasks.t2i.model.ModelFamily.

The policy samples in the VAE's latent space; latents are decoded (batched, no grad) only for
rewards, grids and evaluation. Prompts come from a prompt set (the `prompts` group); their text
embeddings (prompt embeds + pooled, and the empty prompt's for classifier-free guidance) are
computed once per model and prompt, cached on disk, and the text encoders are then released.

Scores on held-out prompts are the configured evaluation rewards (`eval_rewards`, by name; `reward`
is the primary one, the training reward unless set otherwise).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlzoo.rewards import score
from rlzoo.tasks.base import Task, check_lora_targets, instantiate_model
from rlzoo.types import Conditioning

EMPTY = ""  # the negative prompt of classifier-free guidance (SD3's default)


class TextEmbeddingCache:
    """Each prompt's conditioning inputs (the `names` a model family encodes, e.g. prompt_embeds
    and pooled_prompt_embeds), keyed by (family and weights, prompt text), in one safetensors file
    per family and weights."""

    def __init__(self, directory: str | Path, model_key: str, names: tuple[str, ...]):
        self.path = Path(directory).expanduser() / f"{hashlib.sha256(model_key.encode()).hexdigest()[:16]}.safetensors"
        self.model_key, self.names = model_key, tuple(names)
        self._tensors: dict[str, Tensor] = {}
        if self.path.exists():
            from safetensors.torch import load_file

            self._tensors = load_file(str(self.path))

    @staticmethod
    def key(prompt: str) -> str:
        return hashlib.sha256(prompt.encode()).hexdigest()[:24]

    def missing(self, prompts: list[str]) -> list[str]:
        return sorted({p for p in prompts if any(f"{self.key(p)}.{n}" not in self._tensors for n in self.names)})

    def add(self, prompts: list[str], inputs: dict[str, Tensor]) -> None:
        for name in self.names:
            for i, prompt in enumerate(prompts):
                self._tensors[f"{self.key(prompt)}.{name}"] = inputs[name][i].detach().float().cpu().contiguous()

    def save(self) -> None:
        from safetensors.torch import save_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}-{id(self)}")  # (processes may share the cache)
        save_file(self._tensors, str(tmp), metadata={"model": self.model_key})
        tmp.replace(self.path)  # atomic: a crash never leaves half a cache

    def get(self, prompts: list[str]) -> dict[str, Tensor]:
        keys = [self.key(p) for p in prompts]
        return {name: torch.stack([self._tensors[f"{k}.{name}"] for k in keys]).float() for name in self.names}


class T2ITask(Task):
    name = "t2i"
    supports_guidance = True
    makes_images = True  # VAE-decoded latents
    pretrain_command = "no pretraining: the base model is the pipeline's (model.path)"

    def __init__(self, prompts=None, eval_rewards: dict | None = None, embedding_cache: str = "~/.cache/rlzoo/text_embeddings",
                 text_batch_size: int = 32, decode_batch_size: int = 16):
        if not prompts:
            raise ValueError("task=t2i needs a prompt set: prompts=geneval or prompts=file prompts.path=...")
        from rlzoo.ranges import check

        check("task.text_batch_size", text_batch_size, 1, integer=True)
        check("task.decode_batch_size", decode_batch_size, 1, integer=True)
        self.prompt_set = prompts  # a PromptSet, built from prompts=... before the task
        self._train = [p.text for p in self.prompt_set.train()]
        self._heldout = [p.text for p in self.prompt_set.test()]
        self._prompts = {p.text: p for p in [*self.prompt_set.train(), *self.prompt_set.test()]}
        self._eval_rewards = dict(eval_rewards or {})  # rewards, built before the task (lazy models)
        if "reward" not in self._eval_rewards:
            raise ValueError(f"task.eval_rewards needs a 'reward' entry (the primary held-out reward); "
                             f"got {sorted(self._eval_rewards)}")
        self.embedding_cache_dir = embedding_cache
        self.text_batch_size, self.decode_batch_size = int(text_batch_size), int(decode_batch_size)
        self.vae: Any = None  # the pipeline's VAE, once the model is built
        self.cache: TextEmbeddingCache | None = None
        self.sample_shape = ()

    # ------------------------------------------------------------------------ prompts
    def train_prompts(self) -> list[str]:
        return self._train

    def heldout_prompts(self) -> list[str]:
        return self._heldout

    def family(self, prompt: str) -> str:
        return self._prompts[prompt].family if prompt in self._prompts else "file"

    # -------------------------------------------------------------------------- model
    @staticmethod
    def source(model_cfg):
        """The model config's family (a ModelFamily: SD3Tiny, SD3Local, FluxTiny, ...): cheap, loads nothing."""
        return instantiate_model(model_cfg)

    @classmethod
    def check_model(cls, model_cfg, task_name: str) -> None:
        source = cls.source(model_cfg)
        source.check()
        if model_cfg.get("lora") is not None:
            check_lora_targets(model_cfg.lora, source.module_names())

    def build_model(self, model_cfg) -> nn.Module:
        """The pipeline's transformer as the velocity model; keeps the VAE for decoding, fills the
        text-embedding cache for every prompt of the set (and the empty one), releases the text
        encoders."""
        source = self.source(model_cfg)
        pipe = source.pipeline()
        self.vae = pipe.vae.requires_grad_(False).eval()
        self.cache = cache = TextEmbeddingCache(self.embedding_cache_dir, f"{source.family}:{source.key}",
                                                source.inputs)
        missing = cache.missing([EMPTY, *self._train, *self._heldout])
        if missing:
            self._encode(source, pipe, cache, missing)
            cache.save()
        self.sample_shape = source.latent_shape(pipe)
        velocity = source.velocity_model(pipe)
        del pipe  # the text encoders go with it
        return velocity

    @torch.no_grad()
    def _encode(self, source, pipe, cache: TextEmbeddingCache, prompts: list[str]) -> None:
        from diffusers.utils import logging

        device = next(pipe.text_encoder.parameters()).device
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # one "truncated" line per long prompt is noise here
        try:
            for start in range(0, len(prompts), self.text_batch_size):
                chunk = prompts[start:start + self.text_batch_size]
                cache.add(chunk, source.encode(pipe, chunk, device))
        finally:
            logging.set_verbosity(verbosity)

    def load_base_model(self, model_cfg) -> nn.Module:
        return self.build_model(model_cfg)

    # -------------------------------------------------------------------- conditioning
    def _embeddings(self, prompts: list[str]) -> dict[str, Tensor]:
        if self.cache is None:
            raise RuntimeError("t2i: build the model (task.load_base_model) before asking for conditioning")
        return self.cache.get(prompts)

    def conditioning(self, prompts, prompt_ids, group_ids) -> Conditioning:
        return Conditioning(prompts=list(prompts), inputs=self._embeddings(list(prompts)),
                            prompt_ids=prompt_ids, group_ids=group_ids)

    def negative_inputs(self, n: int) -> dict[str, Tensor]:
        return {k: v.expand(n, *v.shape[1:]) for k, v in self._embeddings([EMPTY]).items()}

    # ------------------------------------------------------------------------ images
    @torch.no_grad()
    def images(self, latents: Tensor) -> Tensor:
        """VAE-decoded images in [0, 1], (B, 3, H, W), float32; batched, no grad."""
        vae = self.vae.to(latents.device)
        dtype = next(vae.parameters()).dtype
        out = []
        for start in range(0, len(latents), self.decode_batch_size):
            z = latents[start:start + self.decode_batch_size].to(dtype)
            z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            out.append((vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    # ------------------------------------------------------------------------ scores
    def eval_rewards(self) -> dict:
        return self._eval_rewards

    def metadata(self, prompt: str) -> dict:
        """The prompt set's metadata of a prompt (GenEval's tag / include / exclude), or {}."""
        return self._prompts[prompt].metadata if prompt in self._prompts else {}

    def score(self, x0: Tensor, cond: Conditioning) -> dict[str, Tensor]:
        """Every evaluation reward on the decoded images (decoded once): `name` is its reward,
        `name/key` any other score it returns (a mix's parts, a remote server's extras)."""
        return self._scores(x0, cond, self.images(x0))

    def _scores(self, x0: Tensor, cond: Conditioning, images: Tensor) -> dict[str, Tensor]:
        out = {}
        for name, reward in self.eval_rewards().items():
            scores = score(reward, self, x0, cond, images=images)
            out[name] = scores["reward"]
            out.update({f"{name}/{k}": v for k, v in scores.items() if k != "reward"})
        return out

    def summarize(self, scores: dict[str, Tensor], prompt_ids: Tensor) -> dict[str, float]:
        """Means over samples, and per prompt family (GenEval's tags) where the set has several."""
        out = {k: float(v.float().mean()) for k, v in scores.items()}
        families = [self.family(self._heldout[i]) for i in prompt_ids.tolist()]
        if len(set(families)) > 1:
            for f in sorted(set(families)):
                rows = [i for i, g in enumerate(families) if g == f]
                out.update({f"{k}/{f}": float(v[rows].float().mean()) for k, v in scores.items()})
        return out

    def save_grid(self, x0: Tensor, cond: Conditioning, path: Path, columns: int = 8) -> None:
        from rlzoo.tasks.grid import image_grid

        n = min(len(x0), 64)
        images = self.images(x0[:n])
        reward = self._scores(x0[:n], cond.select(torch.arange(n)), images)["reward"]  # decoded once
        captions = [f"{float(r):.3f}: {p}" for r, p in zip(reward, cond.prompts[:n])]
        image_grid(images, captions, path, columns=columns, tile=max(128, images.shape[-1]))
