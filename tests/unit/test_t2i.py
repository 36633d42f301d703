"""task=t2i on the tiny SD3 (random weights, built in code): LoRA views, CFG, the text-embedding
cache, the diffusers-loadable LoRA, image rewards, and one-line errors before any model is built."""
from dataclasses import replace

import pytest
import torch
from common import SD3_TINY, randomize, t2i_batch, tiny_task, velocity_and_grads
from omegaconf import OmegaConf

from rlzoo.config import CONF_DIR, ConfigError, build, compose_config, validate
from rlzoo.policies import make_policy
from rlzoo.tasks.t2i import T2ITask
from rlzoo.tasks.t2i.model import SD3Tiny


def test_both_kinds_of_policy_provide_the_policy_interface(t2i_lora, cfg_tiny):
    """rlzoo.types.PolicyProtocol is what the trainer, estimators and objectives call: module
    copies (toy2d) and LoRA adapters on one base (t2i) provide all of it."""
    from rlzoo.config import build
    from rlzoo.types import PolicyProtocol

    full = make_policy(build(cfg_tiny.task).load_base_model(cfg_tiny.model), cfg_tiny.model)
    assert isinstance(full, PolicyProtocol) and isinstance(t2i_lora[1], PolicyProtocol)
    assert not isinstance(object(), PolicyProtocol)





def test_reference_is_the_base_model_and_no_copy_exists(t2i_lora, tmp_path):
    task, policy, _ = t2i_lora
    randomize(policy, "current")
    base = SD3Tiny(seed=0).pipeline().transformer  # the same weights, built again
    x, sigma, cond = t2i_batch(task)
    with torch.no_grad():
        expected = base(hidden_states=x, encoder_hidden_states=cond.inputs["prompt_embeds"],
                        pooled_projections=cond.inputs["pooled_prompt_embeds"], timestep=sigma * 1000,
                        return_dict=False)[0]
        assert torch.equal(policy.velocity(x, sigma, cond, "reference"), expected)
        assert (policy.velocity(x, sigma, cond, "current") - expected).abs().max() > 1e-2
    # one base model and three adapters: parameters held = base + 3 x one adapter, nothing more
    held = {id(p): p for p in policy.model.parameters()}
    adapter = sum(p.numel() for p in policy.adapter_params["current"].values())
    base_numel = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in held.values()) == base_numel + 3 * adapter
    assert len(held) == len(list(base.parameters())) + 3 * len(policy.adapter_params["current"])
    assert adapter < 0.2 * base_numel


def test_only_the_current_adapter_trains_and_switching_views_keeps_its_gradient(t2i_lora):
    task, policy, _ = t2i_lora
    randomize(policy, "current", seed=1)
    x, sigma, cond = t2i_batch(task)
    v = policy.velocity(x, sigma, cond, "current")
    with torch.no_grad():  # views switched between the forward and its backward (as the estimators do)
        policy.velocity(x, sigma, cond, "old")
        policy.velocity(x, sigma, cond, "reference")
    v.square().mean().backward()
    assert set(map(id, policy.parameters())) == set(map(id, policy.adapter_params["current"].values()))
    # every current-adapter weight got its gradient (a dropped one would be None); only the last
    # block's context query is unused (SD3's last block is context_pre_only) and gets zeros
    assert all(p.grad is not None for p in policy.parameters())
    zero = [n for n, p in policy.adapter_params["current"].items() if p.grad.abs().sum() == 0]
    assert all(n.startswith("transformer_blocks.1.attn.add_q_proj") for n in zero)
    for view in ("old", "ema"):
        assert all(p.grad is None and not p.requires_grad for p in policy.adapter_params[view].values())
    assert not any(p.requires_grad for n, p in policy.model.named_parameters() if "lora_" not in n)
    for p in policy.parameters():
        p.grad = None


def test_old_and_eval_adapters_follow_the_ema(t2i_lora):
    task, policy, _ = t2i_lora
    randomize(policy, "current", seed=2)
    randomize(policy, "old", seed=3)
    old = {k: v.clone() for k, v in policy.adapter_params["old"].items()}
    policy.update_old(0.25)
    for name, p in policy.adapter_params["old"].items():
        expected = 0.25 * old[name] + 0.75 * policy.adapter_params["current"][name]
        assert torch.allclose(p, expected, atol=1e-7)
    policy.update_ema(0.0)
    x, sigma, cond = t2i_batch(task)
    with torch.no_grad():
        assert torch.allclose(policy.velocity(x, sigma, cond, "ema"), policy.velocity(x, sigma, cond, "current"),
                              atol=1e-6)
    state = policy.state_dict()
    assert set(state) == {"current", "old", "ema"} and set(state["old"]) == set(policy.adapter_params["old"])


def test_exported_lora_loads_into_a_diffusers_pipeline(t2i_lora, tmp_path):
    """The exported LoRA, loaded by StableDiffusion3Pipeline.load_lora_weights into a pipeline
    built from the same tiny components, gives the policy's velocity to 1e-5."""
    from rlzoo.policies import save_lora

    task, policy, _ = t2i_lora
    randomize(policy, "ema", seed=4)
    path = save_lora(policy.adapter_state_dict("ema"), policy.lora, tmp_path / "lora")
    pipe = SD3Tiny(seed=0).pipeline()
    pipe.load_lora_weights(str(path.parent))
    x, sigma, cond = t2i_batch(task)
    with torch.no_grad():
        loaded = pipe.transformer(hidden_states=x, encoder_hidden_states=cond.inputs["prompt_embeds"],
                                  pooled_projections=cond.inputs["pooled_prompt_embeds"], timestep=sigma * 1000,
                                  return_dict=False)[0]
        ours = policy.velocity(x, sigma, cond, "ema")
        assert (ours - policy.velocity(x, sigma, cond, "reference")).abs().max() > 1e-2
    assert (loaded - ours).abs().max() < 1e-5


def test_classifier_free_guidance_is_the_guided_combination(t2i_lora):
    """v = v_u + s·(v_c − v_u), v_u from the empty prompt's cached embedding, for every view."""
    task, policy, _ = t2i_lora
    randomize(policy, "current", seed=5)
    x, sigma, cond = t2i_batch(task)
    guided = task.guided(cond, 4.5)
    with torch.no_grad():
        for view in ("current", "reference"):
            v_c = policy.velocity(x, sigma, cond, view)
            unconditional = replace(guided, prompts=[""] * len(guided), inputs=guided.negative, negative=None,
                                    guidance_scale=1.0)
            v_u = policy.velocity(x, sigma, unconditional, view)
            expected = v_u + 4.5 * (v_c - v_u)
            assert (policy.velocity(x, sigma, guided, view) - expected).abs().max() < 1e-5
    empty = task.conditioning([""], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    assert torch.equal(guided.negative["prompt_embeds"][0], empty.inputs["prompt_embeds"][0])
    assert guided.select(torch.tensor([1, 2])).negative["prompt_embeds"].shape[0] == 2


def test_max_batch_size_splits_forwards_without_changing_the_velocity(t2i_lora):
    task, policy, _ = t2i_lora
    x, sigma, cond = t2i_batch(task, n=5)
    with torch.no_grad():
        full = policy.velocity(x, sigma, task.guided(cond, 2.0), "current")
        policy.max_batch_size = 4  # 2 rows per forward under CFG
        try:
            split = policy.velocity(x, sigma, task.guided(cond, 2.0), "current")
        finally:
            policy.max_batch_size = None
    assert (full - split).abs().max() < 1e-5


def test_text_embeddings_are_cached_once_and_equal_diffusers_encode_prompt(tmp_path):
    task = tiny_task(tmp_path)
    task.load_base_model(OmegaConf.create(SD3_TINY))
    cache_files = list((tmp_path / "embeddings").glob("*.safetensors"))
    assert len(cache_files) == 1
    prompts = task.heldout_prompts()[:3]
    pipe = SD3Tiny(seed=0).pipeline()
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=SD3Tiny().max_sequence_length)
    cond = task.conditioning(prompts, torch.zeros(3), torch.zeros(3))
    # (float32; the cache was encoded in another batch composition)
    assert torch.allclose(cond.inputs["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(cond.inputs["pooled_prompt_embeds"], pooled, atol=1e-5)
    # a second task on the same model reads the cache: its text encoders are never run
    again = tiny_task(tmp_path)
    calls = []
    original = T2ITask._encode
    T2ITask._encode = lambda self, *a: calls.append(a) or original(self, *a)
    try:
        again.load_base_model(OmegaConf.create(SD3_TINY))
    finally:
        T2ITask._encode = original
    assert calls == []
    assert torch.equal(again.conditioning(prompts, torch.zeros(3), torch.zeros(3)).inputs["prompt_embeds"],
                       cond.inputs["prompt_embeds"])


def test_images_are_the_vae_decode(t2i_lora):
    task, _, _ = t2i_lora
    latents = torch.randn(3, *task.sample_shape)
    images = task.images(latents)
    vae = task.vae
    with torch.no_grad():  # as StableDiffusion3Pipeline decodes: unscale, decode, its image processor
        decoded = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    expected = SD3Tiny(seed=0).pipeline().image_processor.postprocess(decoded, output_type="pt")
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert torch.allclose(images, expected, atol=1e-6)


def test_pickscore_is_clip_logits_over_26():
    """The tiny PickScore against transformers' own CLIPModel logits on the same processor inputs."""
    from rlzoo.rewards.images import to_uint8_arrays

    reward = build(OmegaConf.merge(OmegaConf.load(CONF_DIR / "reward" / "pickscore.yaml"), {"tiny": True}))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a cat", "two dogs", "a red car"]
    scores = reward.score(images, prompts)
    model, processor = reward.load()
    inputs = processor(text=prompts, images=to_uint8_arrays(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.diagonal()
    assert torch.allclose(scores, logits / 26, atol=1e-5)


def compose(*overrides):
    return compose_config(["task=t2i", "model=sd3_tiny", "reward.tiny=true", "debug=tiny", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["model=sd35m", "model.path=/nonexistent/sd35m"], "model.path='/nonexistent/sd35m' does not exist; fetch the weights"),
    (["model=sd35m"], "model.path is not set"),
    (["reward.tiny=false"], "reward.path is not set"),
    (["model.lora.target_modules=[attn.to_q,attn.to_nothing]"], "['attn.to_nothing'] match no module"),
    (["sampler.cfg_scale=0.5"], "sampler.cfg_scale must be a number >= 1"),
    (["eval.cfg_scale=0.5"], "eval.cfg_scale must be a number >= 1"),
])
def test_bad_model_reward_lora_or_guidance_is_one_line_before_any_model(overrides, message, monkeypatch):
    built_models = []
    monkeypatch.setattr(SD3Tiny, "pipeline", lambda self: built_models.append(self))
    with pytest.raises(ConfigError) as info:
        validate(compose(*overrides))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert built_models == []


def test_guidance_on_a_task_without_an_empty_prompt_is_refused():
    with pytest.raises(ConfigError, match=r"sampler.cfg_scale=4.5 needs an unconditional .* task 'toy2d'"):
        validate(compose_config(["task=toy2d", "sampler.cfg_scale=4.5"]))


def test_bf16_keeps_lora_weights_and_velocities_in_fp32(tmp_path):
    ref_policy, v32, g32 = velocity_and_grads(tmp_path)
    policy, v16, g16 = velocity_and_grads(tmp_path, precision="bf16")
    assert v16.dtype == torch.float32 and all(p.dtype == torch.float32 for p in policy.parameters())
    frozen = [p for n, p in policy.model.named_parameters() if "lora_" not in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert (v16 - v32).abs().max() < 0.05 * v32.abs().max()
    assert (v16 - v32).abs().max() > 0  # it did run in bf16
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in g16]),
                                                torch.cat([g.flatten() for g in g32]), dim=0)
    assert cos > 0.99


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    _, v, grads = velocity_and_grads(tmp_path)
    policy, v_ckpt, grads_ckpt = velocity_and_grads(tmp_path, gradient_checkpointing=True)
    assert policy.model.transformer.gradient_checkpointing
    assert torch.allclose(v, v_ckpt, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ckpt))


def test_unknown_precision_is_one_line_before_any_model(monkeypatch):
    monkeypatch.setattr(SD3Tiny, "pipeline", lambda self: pytest.fail("model built"))
    with pytest.raises(ConfigError, match=r"unknown model.precision 'fp8'; valid: fp32, tf32, bf16"):
        validate(compose("model.precision=fp8"))


def test_sd35m_loads_a_local_diffusers_directory(tmp_path):
    """model=sd35m reads any diffusers SD3 directory (here the tiny pipeline, saved): the real
    loader end to end, local files only."""
    from rlzoo.tasks.t2i.model import SD3Local

    SD3Tiny(seed=0).pipeline().save_pretrained(tmp_path / "sd3")
    cfg = compose("model=sd35m", f"model.path={tmp_path / 'sd3'}", "model.max_sequence_length=64",
                  "model.text_encoder_dtype=float32", "model.precision=fp32", "model.lora.rank=4", "model.lora.alpha=8")
    validate(cfg)
    source = SD3Local(str(tmp_path / "sd3"), "float32", 64)
    assert source.transformer_config()["dual_attention_layers"] == [0]
    task = tiny_task(tmp_path)
    policy = make_policy(task.load_base_model(cfg.model), cfg.model)
    x, sigma, cond = t2i_batch(task)
    base = SD3Tiny(seed=0).pipeline().transformer
    with torch.no_grad():
        expected = base(hidden_states=x, encoder_hidden_states=cond.inputs["prompt_embeds"],
                        pooled_projections=cond.inputs["pooled_prompt_embeds"], timestep=sigma * 1000,
                        return_dict=False)[0]
        assert torch.allclose(policy.velocity(x, sigma, cond, "reference"), expected, atol=1e-6)


def test_a_hub_id_not_in_the_cache_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"model.path='stabilityai/stable-diffusion-3.5-medium' is neither a "
                                          r"directory nor a hub id in the local cache; fetch the weights"):
        validate(compose("model=sd35m", "model.path=stabilityai/stable-diffusion-3.5-medium"))
