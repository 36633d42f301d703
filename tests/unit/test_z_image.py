"""Z-Image as a model family, held to diffusers' ZImagePipeline as the oracle (tiny random weights,
fp32): rlzoo's velocity is the pipeline's negated transformer call on each prompt's own tokens, its
Euler rollout on the family's schedule ends on the pipeline's latents and images, with and without
classifier-free guidance (the pipeline's w is rlzoo's s = 1 + w), and an exported LoRA loads into
the pipeline and samples as rlzoo does."""
import pytest
import torch

from rlzoo.samplers import EulerSampler
from rlzoo.tasks.t2i.z_image import ZImageTiny
from rlzoo.types import Conditioning

PROMPTS = ["a red circle", "two blue squares on a table"]  # (of different lengths)
SCHEDULE = {"shift": 3.0}


@pytest.fixture(scope="module")
def z_image():
    """(family, pipeline, the prompts' conditioning as rlzoo caches it, the empty prompt's inputs)."""
    family = ZImageTiny(schedule=SCHEDULE)
    pipe = family.pipeline()
    with torch.no_grad():
        inputs = family.encode(pipe, PROMPTS, torch.device("cpu"))
        empty = family.encode(pipe, ["", ""], torch.device("cpu"))
    cond = Conditioning(prompts=PROMPTS, inputs={k: v.float() for k, v in inputs.items()},
                        prompt_ids=torch.arange(2), group_ids=torch.arange(2))
    return family, pipe, cond, {k: v.float() for k, v in empty.items()}


@torch.no_grad()
def test_the_cached_inputs_are_each_prompts_own_tokens(z_image):
    family, pipe, cond, _ = z_image
    theirs, _ = pipe.encode_prompt(list(PROMPTS), do_classifier_free_guidance=False,
                                   max_sequence_length=family.max_sequence_length)
    mask = cond.inputs["prompt_mask"].bool()
    assert [int(m.sum()) for m in mask] == [len(t) for t in theirs] and len(theirs[0]) != len(theirs[1])
    assert all(torch.equal(cond.inputs["prompt_embeds"][i][mask[i]], theirs[i]) for i in range(2))


@torch.no_grad()
def test_the_velocity_is_the_pipelines_negated_transformer_call(z_image):
    family, pipe, cond, _ = z_image
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(0.3)
    theirs, _ = pipe.encode_prompt(list(PROMPTS), do_classifier_free_guidance=False,
                                   max_sequence_length=family.max_sequence_length)
    out = pipe.transformer(list(x.unsqueeze(2).unbind(0)), (1 - sigma).expand(2), theirs, return_dict=False)[0]
    expected = -torch.stack(out).squeeze(2)
    assert torch.allclose(family.velocity_model(pipe)(x, sigma, cond), expected, atol=1e-6)


@pytest.mark.parametrize("w", [0.0, 2.0], ids=["no_cfg", "cfg"])
@torch.no_grad()
def test_the_euler_rollout_ends_on_the_pipelines_latents_and_images(z_image, w):
    from rlzoo.policies.guidance import guided_velocity

    family, pipe, cond, empty = z_image
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    def call(output_type):  # (fresh prompt lists: the pipeline chat-templates them in place)
        return pipe(prompt=list(PROMPTS), negative_prompt=["", ""], latents=noise, height=32, width=32,
                    num_inference_steps=3, guidance_scale=w, max_sequence_length=family.max_sequence_length,
                    output_type=output_type).images

    theirs = call("latent")
    sampler = EulerSampler(3, schedule=SCHEDULE)
    assert torch.allclose(sampler.sigmas(), pipe.scheduler.sigmas.float(), atol=1e-7)
    velocity = family.velocity_model(pipe)
    guided = cond.with_guidance(1 + w, empty) if w else cond
    ours = sampler.sample(lambda x, s, c: guided_velocity(velocity, x, s, c), noise, guided).x0
    assert torch.allclose(ours, theirs, atol=1e-5)
    images = call("pt")
    z = ours / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    assert torch.allclose((pipe.vae.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1), images, atol=1e-5)


@torch.no_grad()
def test_an_exported_lora_loads_into_z_image_pipeline_and_samples_as_rlzoo(z_image, tmp_path):
    from common import randomize
    from omegaconf import OmegaConf

    from rlzoo.config import CONF_DIR
    from rlzoo.policies import make_policy, save_lora

    family, _, cond, _ = z_image
    lora = OmegaConf.merge(OmegaConf.load(CONF_DIR / "shared" / "lora_z_image.yaml"), {"rank": 4, "alpha": 8})
    policy = make_policy(family.velocity_model(family.pipeline()), OmegaConf.create({"lora": lora}))
    randomize(policy, "ema", seed=4)
    path = save_lora(policy.adapter_state_dict("ema"), policy.lora, tmp_path / "lora")
    pipe = ZImageTiny(schedule=SCHEDULE).pipeline()
    pipe.load_lora_weights(str(path.parent))
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    theirs = pipe(prompt=list(PROMPTS), latents=noise, height=32, width=32, num_inference_steps=3, guidance_scale=0.0,
                  max_sequence_length=family.max_sequence_length, output_type="latent").images
    sampler = EulerSampler(3, schedule=SCHEDULE)
    ours = sampler.sample(policy.velocity_fn("ema"), noise, cond).x0
    base = sampler.sample(policy.velocity_fn("reference"), noise, cond).x0
    assert (ours - base).abs().max() > 1e-2  # (the adapter moves the samples, so a dropped load would show)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_the_full_size_random_z_image_is_its_6b_transformer():
    """model=z_image_random builds Z-Image's transformer from its published config: on the meta
    device it holds the 6 B parameters of its model card (6.15 B)."""
    from rlzoo.config import compose_config
    from rlzoo.tasks.base import instantiate_model

    family = instantiate_model(compose_config(["task=t2i", "model=z_image_random"]).model)
    with torch.device("meta"):
        transformer = family.transformer_class().from_config(family.transformer_config())
    count = sum(p.numel() for p in transformer.parameters())
    assert 6.0e9 < count < 6.3e9, count
    assert len(transformer.layers) == 30 and len(transformer.noise_refiner) == 2


def test_z_image_loads_a_local_diffusers_directory(tmp_path):
    """model=z_image reads a diffusers Z-Image directory (here the tiny pipeline, saved) into task=t2i."""
    from common import tiny_task

    from rlzoo.config import compose_config, validate
    from rlzoo.policies import make_policy
    from rlzoo.tasks.t2i.z_image import ZImageVelocity

    ZImageTiny(schedule=SCHEDULE).pipeline().save_pretrained(tmp_path / "z")
    cfg = compose_config(["task=t2i", "model=z_image", f"model.path={tmp_path / 'z'}", "model.image_size=32",
                          "model.max_sequence_length=64", "reward.tiny=true", "model.text_encoder_dtype=float32",
                          "model.precision=fp32", "model.lora.rank=4", "model.lora.alpha=8",
                          "model.gradient_checkpointing=false"])
    validate(cfg)
    task = tiny_task(tmp_path)
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    assert task.sample_shape == (4, 16, 16)
    x = torch.randn(2, *task.sample_shape, generator=torch.Generator().manual_seed(5))
    cond = task.conditioning(task.train_prompts()[:2], torch.arange(2), torch.arange(2))
    with torch.no_grad():
        expected = ZImageVelocity(ZImageTiny(schedule=SCHEDULE).pipeline().transformer)(x, torch.tensor(0.4), cond)
        assert torch.allclose(policy.velocity(x, torch.tensor(0.4), cond, "reference"), expected, atol=1e-6)


@pytest.mark.parametrize("schedule", [{}, {"shift": 3.0, "image_seq_len": 64}])
def test_a_schedule_takes_one_rule(schedule):
    with pytest.raises(ValueError, match="sampler.schedule takes image_seq_len .* or shift .*, one of them"):
        EulerSampler(3, schedule=schedule)


def test_an_evaluation_shift_a_family_schedule_would_ignore_is_refused():
    from rlzoo.config import ConfigError, compose_config, validate

    with pytest.raises(ConfigError, match=r"eval.shift=2.0 is not read: the model family's sampler.schedule"):
        validate(compose_config(["task=t2i", "model=z_image_tiny", "reward.tiny=true", "+eval.shift=2.0"]),
                 check_model=False)


@pytest.mark.parametrize("model", ["z_image_tiny", "flux_tiny"])
def test_a_sampler_shift_a_family_schedule_would_ignore_is_refused(model):
    """The families with their own rule leave sampler.shift null; a user's value would not be read."""
    from rlzoo.config import ConfigError, compose_config, validate

    assert compose_config(["task=t2i", f"model={model}"]).sampler.shift is None
    with pytest.raises(ConfigError, match=r"sampler.shift=2.0 is not read: the model family's sampler.schedule"):
        validate(compose_config(["task=t2i", f"model={model}", "reward.tiny=true", "sampler.shift=2.0"]),
                 check_model=False)
    # without the family's rule, the shift is SD3.5's, and a user's value is read
    cfg = compose_config(["task=t2i", f"model={model}", "model.schedule=null", "sampler.shift=2.0"])
    assert cfg.sampler.shift == 2.0 and cfg.sampler.schedule is None
