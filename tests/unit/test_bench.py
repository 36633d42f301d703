"""The benchmark's machinery (its numbers are measured by `make bench`, never asserted here)."""



def test_sd35m_random_is_sd35_mediums_transformer():
    """model=sd35m_random builds the transformer of stabilityai/stable-diffusion-3.5-medium's
    transformer/config.json (sample size set for 512²) with random weights: 2.24 B parameters,
    built here on the meta device (no memory, no download)."""
    import torch
    from diffusers import SD3Transformer2DModel
    from omegaconf import OmegaConf

    from rlzoo.config import CONF_DIR, build

    node = OmegaConf.load(CONF_DIR / "model" / "sd35m_random.yaml")
    source = build({k: v for k, v in OmegaConf.to_container(node).items()
                    if k in ("_target_", "seed", "image_size", "latent_channels", "vae_channels", "num_layers",
                             "num_attention_heads", "attention_head_dim", "caption_projection_dim",
                             "pos_embed_max_size", "dual_attention_layers", "text_dim", "joint_attention_dim",
                             "max_sequence_length")})
    published = {"attention_head_dim": 64, "caption_projection_dim": 1536, "dual_attention_layers": tuple(range(13)),
                 "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24,
                 "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
                 "qk_norm": "rms_norm"}
    config = source.transformer_config()
    assert {k: config[k] for k in published} == published and config["sample_size"] == 64  # 512 / 8
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(**config)
    assert sum(p.numel() for p in transformer.parameters()) == 2_243_171_520
