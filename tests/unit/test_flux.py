"""FLUX.1 as a model family, held to diffusers' FluxPipeline as the oracle (tiny random weights,
fp32): rlzoo's velocity is the pipeline's transformer call on packed latents, and rlzoo's Euler
rollout from the same noise, prompt embeddings and sigmas ends on the pipeline's own latents and
images. FLUX.1-dev's guidance embedding and schnell's absence of one are both checked."""
import pytest
import torch
from diffusers import FluxPipeline

from rlzoo.samplers import EulerSampler
from rlzoo.tasks.t2i.flux import FluxTiny, FluxVelocity, pack, unpack
from rlzoo.types import Conditioning

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module", params=[3.5, None], ids=["dev", "schnell"])
def flux(request):
    """(family, pipeline, the prompts' conditioning as rlzoo caches it)."""
    family = FluxTiny(guidance=request.param)
    pipe = family.pipeline()
    with torch.no_grad():
        inputs = family.encode(pipe, PROMPTS, torch.device("cpu"))
    cond = Conditioning(prompts=PROMPTS, inputs={k: v.float() for k, v in inputs.items()},
                        prompt_ids=torch.arange(2), group_ids=torch.arange(2))
    return family, pipe, cond


def test_packing_is_the_pipelines(flux):
    family, pipe, _ = flux
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    packed = FluxPipeline._pack_latents(latents, 2, 4, 16, 16)
    assert torch.equal(pack(latents), packed)
    assert torch.equal(unpack(packed, 16, 16), latents)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 32, 32, pipe.vae_scale_factor), latents)
    assert family.latent_shape(pipe) == (4, 16, 16)


@torch.no_grad()
def test_the_velocity_is_the_pipelines_transformer_call(flux):
    family, pipe, cond = flux
    velocity = family.velocity_model(pipe)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(0.7)
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=family.max_sequence_length)
    guidance = None if family.guidance is None else torch.full((2,), family.guidance)
    expected = pipe.transformer(hidden_states=FluxPipeline._pack_latents(x, 2, 4, 16, 16), timestep=sigma.expand(2),
                                guidance=guidance, pooled_projections=pooled, encoder_hidden_states=embeds,
                                txt_ids=text_ids, img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu",
                                                                                                 torch.float32),
                                return_dict=False)[0]
    assert torch.allclose(pack(velocity(x, sigma, cond)), expected, atol=1e-6)


@torch.no_grad()
def test_the_euler_rollout_ends_on_the_pipelines_latents_and_images(flux):
    """FluxPipeline samples with its dynamic shift (mu from the image's sequence length): rlzoo's
    sampler with the family's schedule rule draws the same sigmas, and its Euler rollout from the
    same noise ends on the pipeline's latents and images."""
    family, pipe, cond = flux
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    guidance = {} if family.guidance is None else {"guidance_scale": family.guidance}
    out = pipe(prompt_embeds=cond.inputs["prompt_embeds"], pooled_prompt_embeds=cond.inputs["pooled_prompt_embeds"],
               latents=pack(noise), height=32, width=32, num_inference_steps=3, output_type="latent",
               return_dict=False, **guidance)[0]
    sampler = EulerSampler(3, schedule={"image_seq_len": 64})  # (model=flux_tiny's: 32 px pack into 64 tokens)
    assert torch.allclose(sampler.sigmas(), pipe.scheduler.sigmas.float(), atol=1e-7)  # the pipeline's, shifted by mu
    rollout = sampler.sample(family.velocity_model(pipe), noise, cond)
    assert torch.allclose(pack(rollout.x0), out, atol=1e-5)
    images = pipe(prompt_embeds=cond.inputs["prompt_embeds"], pooled_prompt_embeds=cond.inputs["pooled_prompt_embeds"],
                  latents=pack(noise), height=32, width=32, num_inference_steps=3, output_type="pt",
                  return_dict=False, **guidance)[0]
    z = rollout.x0 / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    ours = (pipe.vae.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(ours, images, atol=1e-5)


def test_guidance_must_match_the_transformer():
    dev, schnell = FluxTiny(guidance=3.5), FluxTiny(guidance=None)
    with pytest.raises(ValueError, match="embeds a guidance scale .* set model.guidance"):
        FluxVelocity(dev.pipeline().transformer, None)
    with pytest.raises(ValueError, match="model.guidance=3.5: this FLUX transformer has no guidance embedding"):
        FluxVelocity(schnell.pipeline().transformer, 3.5)


@torch.no_grad()
def test_an_exported_lora_loads_into_flux_pipeline_and_samples_as_rlzoo(flux, tmp_path):
    """rlzoo's LoRA file (the shipped FLUX targets), loaded by FluxPipeline.load_lora_weights into a
    pipeline built from the same tiny weights, samples what rlzoo's policy samples."""
    from common import randomize
    from omegaconf import OmegaConf

    from rlzoo.config import CONF_DIR
    from rlzoo.policies import make_policy, save_lora

    family, _, cond = flux
    lora = OmegaConf.merge(OmegaConf.load(CONF_DIR / "shared" / "lora_flux.yaml"), {"rank": 4, "alpha": 8})
    policy = make_policy(family.velocity_model(family.pipeline()), OmegaConf.create({"lora": lora}))
    randomize(policy, "ema", seed=4)
    path = save_lora(policy.adapter_state_dict("ema"), policy.lora, tmp_path / "lora")
    pipe = FluxTiny(guidance=family.guidance).pipeline()
    pipe.load_lora_weights(str(path.parent))
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    guidance = {} if family.guidance is None else {"guidance_scale": family.guidance}
    theirs = pipe(prompt_embeds=cond.inputs["prompt_embeds"], pooled_prompt_embeds=cond.inputs["pooled_prompt_embeds"],
                  latents=pack(noise), height=32, width=32, num_inference_steps=3, output_type="latent",
                  return_dict=False, **guidance)[0]
    sampler = EulerSampler(3, schedule={"image_seq_len": 64})
    ours = sampler.sample(policy.velocity_fn("ema"), noise, cond).x0
    base = sampler.sample(policy.velocity_fn("reference"), noise, cond).x0
    assert (ours - base).abs().max() > 1e-2  # (the adapter moves the samples, so a dropped load would show)
    assert torch.allclose(pack(ours), theirs, atol=1e-5)


def test_flux_dev_loads_a_local_diffusers_directory(tmp_path):
    """model=flux_dev reads any diffusers FLUX.1 directory (here the tiny pipeline, saved): the real
    loader end to end, local files only, into task=t2i, whose policy's base velocity is the saved
    transformer's."""
    from common import tiny_task

    from rlzoo.config import compose_config, validate
    from rlzoo.policies import make_policy

    FluxTiny().pipeline().save_pretrained(tmp_path / "flux")
    cfg = compose_config(["task=t2i", "model=flux_dev", f"model.path={tmp_path / 'flux'}", "model.image_size=32",
                          "model.schedule.image_seq_len=64", "model.max_sequence_length=64", "reward.tiny=true",
                          "model.text_encoder_dtype=float32", "model.precision=fp32", "model.lora.rank=4",
                          "model.lora.alpha=8", "model.gradient_checkpointing=false"])
    validate(cfg)
    task = tiny_task(tmp_path)
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    assert task.sample_shape == (4, 16, 16)  # 32 px through the tiny VAE, which halves once
    x = torch.randn(2, *task.sample_shape, generator=torch.Generator().manual_seed(5))
    cond = task.conditioning(task.train_prompts()[:2], torch.arange(2), torch.arange(2))
    expected = FluxVelocity(FluxTiny().pipeline().transformer, 3.5)
    with torch.no_grad():
        assert torch.allclose(policy.velocity(x, torch.tensor(0.4), cond, "reference"),
                              expected(x, torch.tensor(0.4), cond), atol=1e-6)


def test_a_missing_flux_directory_is_one_line_saying_how_to_fetch_it():
    from rlzoo.config import ConfigError, compose_config, validate

    with pytest.raises(ConfigError, match=r"model.path is not set; .*hf download black-forest-labs/FLUX.1-schnell"):
        validate(compose_config(["task=t2i", "model=flux_schnell", "reward.tiny=true"]))


def test_the_full_size_random_flux_is_flux1s_12b_transformer():
    """model=flux_random builds FLUX.1-dev's transformer from its published config: on the meta
    device (no memory) it holds the 12 B parameters of the model card (11.90 B)."""
    from rlzoo.config import compose_config
    from rlzoo.tasks.base import instantiate_model

    family = instantiate_model(compose_config(["task=t2i", "model=flux_random"]).model)
    with torch.device("meta"):
        transformer = family.transformer_class().from_config(family.transformer_config())
    count = sum(p.numel() for p in transformer.parameters())
    assert abs(count - 12e9) / 12e9 < 0.01, count
    assert transformer.config.guidance_embeds and len(transformer.single_transformer_blocks) == 38


def test_a_schedule_for_another_resolution_is_one_line():
    from rlzoo.config import ConfigError, compose_config, validate

    with pytest.raises(ConfigError, match=r"model.schedule.image_seq_len=1024, but 32-pixel samples pack into 64 "
                                          r"latent tokens .* use model.schedule.image_seq_len=64"):
        validate(compose_config(["task=t2i", "model=flux_tiny", "reward.tiny=true", "model.schedule.image_seq_len=1024"]))


def test_the_attention_backend_is_diffusers_own_and_refused_where_it_would_do_nothing():
    """model.attention_backend sets diffusers' backend on every view of FLUX.1; an unknown name, a
    backend whose package is missing, or a family whose attention does not dispatch (SD3) is one line."""
    from omegaconf import OmegaConf

    from rlzoo.config import ConfigError, compose_config, validate
    from rlzoo.policies import make_policy
    from rlzoo.tasks.t2i.model import SD3Tiny

    def refused(value, model="flux_tiny"):
        with pytest.raises(ConfigError) as error:
            validate(compose_config(["task=t2i", f"model={model}", "reward.tiny=true", f"model.attention_backend={value}"]),
                     check_model=False)
        return str(error.value)

    assert "unknown model.attention_backend 'fast'; valid: null, flash," in refused("fast")
    assert refused("xformers").startswith("model.attention_backend=xformers: Xformers Attention backend")  # not installed

    family = FluxTiny()
    pipe = family.pipeline()
    default = family.velocity_model(pipe)
    settings = OmegaConf.create({"attention_backend": "_native_math"})
    policy = make_policy(family.velocity_model(family.pipeline()), settings)
    for view in ("current", "old", "reference", "ema"):
        backends = {m.processor._attention_backend for m in policy.module(view).modules() if hasattr(m, "processor")}
        assert {str(b) for b in backends} == {"AttentionBackendName._NATIVE_MATH"}
    x, sigma = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor(0.7)
    with torch.no_grad():
        inputs = family.encode(pipe, PROMPTS, torch.device("cpu"))
        cond = Conditioning(prompts=PROMPTS, inputs={k: v.float() for k, v in inputs.items()},
                            prompt_ids=torch.arange(2), group_ids=torch.arange(2))
        assert torch.allclose(policy.velocity(x, sigma, cond, "current"), default(x, sigma, cond), atol=1e-5)

    assert refused("native", model="sd3_tiny") == ("model.attention_backend=native: SD3Tiny's attention does not go "
                                                   "through diffusers' attention backends (FLUX.1's and Z-Image's do); "
                                                   "use model.attention_backend=null")
    sd3 = SD3Tiny()  # (built in Python, past validation: the policy refuses it too)
    with pytest.raises(ValueError, match=r"attention_backend=native: .* does not go through diffusers' attention "
                                         r"backends \(FLUX.1's and Z-Image's do\); use model.attention_backend=null"):
        make_policy(sd3.velocity_model(sd3.pipeline()), OmegaConf.create({"attention_backend": "native"}))
