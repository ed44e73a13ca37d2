"""Single-file (ldm) checkpoint <-> diffusers conversion, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from lib_training.errors import CheckpointError
from lib_training.models import ldm_convert as lc
from lib_training.models import sd_configs

HIDDEN = 32


def tiny_unet_config(family: str, layers: int) -> dict:
    sd2 = family == "sd2"
    return {
        "sample_size": 8,
        "block_out_channels": (32, 64),
        "layers_per_block": layers,
        "cross_attention_dim": HIDDEN,
        "attention_head_dim": (2, 4) if sd2 else 8,
        "use_linear_projection": sd2,
        "norm_num_groups": 8,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    }


def tiny_vae_config(layers: int) -> dict:
    return {
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "layers_per_block": layers,
        "norm_num_groups": 8,
        "latent_channels": 4,
        "sample_size": 16,
    }


def tiny_text_config(family: str) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        vocab_size=1000,
        hidden_act="gelu" if family == "sd2" else "quick_gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def randomize(model: nn.Module) -> nn.Module:
    """Random non-zero weights everywhere (diffusers zero-inits some output convs)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def tiny_models(family: str, layers: int, seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    unet = randomize(UNet2DConditionModel(**tiny_unet_config(family, layers)))
    vae = randomize(AutoencoderKL(**tiny_vae_config(layers)))
    text = randomize(CLIPTextModel(tiny_text_config(family)))
    return unet, vae, text


def without_position_ids(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.endswith("position_ids")}


def canonical(sd: dict) -> dict:
    """Text keys in the diffusers-repo layout whatever the transformers version."""
    return lc._with_text_model(without_position_ids(sd))


def to_ldm(unet: nn.Module, vae: nn.Module, text: nn.Module, family: str) -> dict:
    return lc.diffusers_to_ldm(
        unet.state_dict(), vae.state_dict(), text.state_dict(), unet.config, vae.config, family
    )


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].shape == tensor.shape, key
        assert torch.equal(actual[key], tensor), key


# --------------------------------------------------------------------- round trips


@pytest.mark.parametrize("family,layers", [("sd1", 1), ("sd1", 2), ("sd2", 1), ("sd2", 2)])
def test_round_trip_keeps_every_tensor(family: str, layers: int) -> None:
    unet, vae, text = tiny_models(family, layers)
    ldm = to_ldm(unet, vae, text, family)
    assert lc.detect_family(ldm) == family

    unet_sd, vae_sd, text_sd = lc.ldm_to_diffusers(ldm, unet.config, vae.config, text.config, family)
    assert_same_tensors(unet_sd, unet.state_dict())
    assert_same_tensors(vae_sd, vae.state_dict())
    assert_same_tensors(text_sd, canonical(text.state_dict()))


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_round_trip_models_give_identical_outputs(family: str) -> None:
    unet, vae, text = tiny_models(family, layers=2, seed=1)
    ldm = to_ldm(unet, vae, text, family)
    unet2, vae2, text2 = tiny_models(family, layers=2, seed=2)  # different random weights
    unet_sd, vae_sd, text_sd = lc.ldm_to_diffusers(ldm, unet2.config, vae2.config, text2.config, family)
    for model, sd, what in ((unet2, unet_sd, "UNet"), (vae2, vae_sd, "VAE"), (text2, text_sd, "text encoder")):
        lc.load_converted(model, sd, what)

    torch.manual_seed(3)
    ids = torch.randint(3, 1000, (2, 7))
    latents, image = torch.randn(2, 4, 8, 8), torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        context = text(ids).last_hidden_state
        assert torch.equal(text2(ids).last_hidden_state, context)
        t = torch.tensor([10, 500])
        assert torch.equal(unet2(latents, t, context).sample, unet(latents, t, context).sample)
        assert torch.equal(vae2.encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean)
        assert torch.equal(vae2.decode(latents[:1]).sample, vae.decode(latents[:1]).sample)


# ------------------------------------------------------------------ ldm-side layout


def test_tiny_ldm_keys_follow_the_original_layout() -> None:
    unet, vae, text = tiny_models("sd1", layers=1)
    ldm = to_ldm(unet, vae, text, "sd1")
    u, f, t = lc.UNET_PREFIX, lc.VAE_PREFIX, lc.SD1_TEXT_PREFIX
    expected = [
        u + "time_embed.0.weight",
        u + "input_blocks.0.0.weight",
        u + "input_blocks.1.0.in_layers.0.weight",
        u + "input_blocks.1.1.proj_in.weight",
        u + "input_blocks.2.0.op.weight",  # downsample after level 0
        u + "input_blocks.3.0.skip_connection.weight",  # 32 -> 64 channels
        u + "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        u + "output_blocks.1.1.conv.weight",  # upsample, level without attention
        u + "output_blocks.3.1.transformer_blocks.0.ff.net.0.proj.weight",
        u + "out.2.bias",
        f + "encoder.down.0.downsample.conv.weight",
        f + "encoder.down.1.block.0.nin_shortcut.weight",
        f + "decoder.up.1.upsample.conv.weight",
        f + "decoder.up.0.block.0.nin_shortcut.weight",  # 64 -> 32 at the last decoder level
        f + "encoder.mid.attn_1.q.weight",
        f + "quant_conv.weight",
        t + "text_model.encoder.layers.1.mlp.fc2.weight",
        t + "text_model.embeddings.position_ids",
    ]
    for key in expected:
        assert key in ldm, key
    assert ldm[u + "input_blocks.1.1.proj_in.weight"].ndim == 4  # conv projection in SD1
    assert ldm[f + "encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)  # ldm 1x1 conv
    assert not any(k.startswith(u + "input_blocks.1.0.skip_connection") for k in ldm)
    assert not any(k.startswith(u + "input_blocks.3.1.") for k in ldm)  # level 1 has no attention
    assert not any(k.startswith(f + "decoder.up.0.upsample") for k in ldm)


def test_sd2_text_uses_openclip_layout() -> None:
    _, _, text = tiny_models("sd2", layers=1)
    ldm = lc.diffusers_to_ldm({}, {}, text.state_dict(), tiny_unet_config("sd2", 1), tiny_vae_config(1), "sd2")
    p = lc.SD2_TEXT_PREFIX
    assert ldm[p + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * HIDDEN, HIDDEN)
    assert ldm[p + "positional_embedding"].shape == (77, HIDDEN)
    assert p + "ln_final.weight" in ldm and p + "transformer.resblocks.1.mlp.c_proj.bias" in ldm
    assert not any("text_model" in k for k in ldm)


def openclip_text_forward(sd: dict, ids: torch.Tensor, heads: int) -> torch.Tensor:
    """OpenCLIP's text tower (pre-LN, causal nn.MultiheadAttention), from ldm keys."""
    p = lc.SD2_TEXT_PREFIX
    width = sd[p + "token_embedding.weight"].shape[1]
    length = ids.shape[1]
    x = sd[p + "token_embedding.weight"][ids] + sd[p + "positional_embedding"][:length]
    mask = torch.full((length, length), float("-inf")).triu(1)
    layers = {k.split(".")[4] for k in sd if k.startswith(p + "transformer.resblocks.")}
    for i in range(len(layers)):
        r = f"{p}transformer.resblocks.{i}."
        attn = nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({k[len(r) + 5:]: v for k, v in sd.items() if k.startswith(r + "attn.")})
        h = nn.functional.layer_norm(x, (width,), sd[r + "ln_1.weight"], sd[r + "ln_1.bias"])
        x = x + attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        h = nn.functional.layer_norm(x, (width,), sd[r + "ln_2.weight"], sd[r + "ln_2.bias"])
        h = nn.functional.gelu(nn.functional.linear(h, sd[r + "mlp.c_fc.weight"], sd[r + "mlp.c_fc.bias"]))
        x = x + nn.functional.linear(h, sd[r + "mlp.c_proj.weight"], sd[r + "mlp.c_proj.bias"])
    return nn.functional.layer_norm(x, (width,), sd[p + "ln_final.weight"], sd[p + "ln_final.bias"])


def test_sd2_openclip_weights_compute_what_clip_text_model_computes() -> None:
    _, _, text = tiny_models("sd2", layers=1)
    ldm = lc.diffusers_to_ldm({}, {}, text.state_dict(), tiny_unet_config("sd2", 1), tiny_vae_config(1), "sd2")
    ids = torch.randint(3, 1000, (2, 9))
    with torch.no_grad():
        expected = text(ids).last_hidden_state
        actual = openclip_text_forward(ldm, ids, heads=4)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_sd2_uses_only_the_configured_layers_and_ignores_extras() -> None:
    _, _, text = tiny_models("sd2", layers=1)
    ldm = lc.diffusers_to_ldm({}, {}, text.state_dict(), tiny_unet_config("sd2", 1), tiny_vae_config(1), "sd2")
    p = lc.SD2_TEXT_PREFIX
    # A real SD2 file has one more resblock (unused: penultimate layer) and a projection.
    for key in [k for k in ldm if k.startswith(p + "transformer.resblocks.1.")]:
        ldm[key.replace("resblocks.1.", "resblocks.2.")] = torch.randn_like(ldm[key])
    ldm[p + "text_projection"] = torch.randn(HIDDEN, HIDDEN)
    ldm[p + "logit_scale"] = torch.tensor(4.6)
    section = lc._section(ldm, p)
    text_sd = lc._sd2_text_to_diffusers(section, num_layers=2)
    assert_same_tensors(text_sd, canonical(text.state_dict()))


@pytest.mark.parametrize("with_ids", [True, False])
def test_sd1_text_with_or_without_position_ids(with_ids: bool) -> None:
    unet, vae, text = tiny_models("sd1", layers=1)
    ldm = to_ldm(unet, vae, text, "sd1")
    ids_key = lc.SD1_TEXT_PREFIX + "text_model.embeddings.position_ids"
    if not with_ids:
        del ldm[ids_key]
    _, _, text_sd = lc.ldm_to_diffusers(ldm, unet.config, vae.config, text.config, "sd1")
    assert not any(k.endswith("position_ids") for k in text_sd)
    fresh = CLIPTextModel(tiny_text_config("sd1"))
    lc.load_converted(fresh, text_sd, "text encoder")
    assert_same_tensors(canonical(fresh.state_dict()), canonical(text.state_dict()))


def test_ignores_ema_schedule_and_vae_loss_keys() -> None:
    unet, vae, text = tiny_models("sd1", layers=1)
    ldm = to_ldm(unet, vae, text, "sd1")
    ldm["model_ema.decay"] = torch.tensor(0.999)
    ldm["alphas_cumprod"] = torch.ones(1000)
    ldm["first_stage_model.loss.logvar"] = torch.zeros(())
    unet_sd, vae_sd, _ = lc.ldm_to_diffusers(ldm, unet.config, vae.config, text.config, "sd1")
    assert len(unet_sd) == len(unet.state_dict()) and len(vae_sd) == len(vae.state_dict())


def test_vae_accepts_linear_attention_weights() -> None:
    # Some re-saved checkpoints already store the VAE attention as (C, C).
    unet, vae, text = tiny_models("sd1", layers=1)
    ldm = to_ldm(unet, vae, text, "sd1")
    key = lc.VAE_PREFIX + "decoder.mid.attn_1.v.weight"
    ldm[key] = ldm[key][:, :, 0, 0]
    _, vae_sd, _ = lc.ldm_to_diffusers(ldm, unet.config, vae.config, text.config, "sd1")
    assert torch.equal(vae_sd["decoder.mid_block.attentions.0.to_v.weight"], ldm[key])


# ------------------------------------------------------------------ real SD configs


def sd_unet_on_meta(family: str) -> UNet2DConditionModel:
    with torch.device("meta"):  # names and shapes only, no memory
        return UNet2DConditionModel(**sd_configs.unet_config(family))


def param_owners(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None}


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_unet_map_of_real_config_covers_the_model(family: str) -> None:
    unet = sd_unet_on_meta(family)
    module_map = lc.unet_module_map(unet.config)
    modules = dict(unet.named_modules())
    assert len(set(module_map.values())) == len(module_map)  # one-to-one
    assert set(module_map.values()) <= set(modules)
    assert param_owners(unet) <= set(module_map.values())
    assert len(unet.state_dict()) == 686  # tensors in model.diffusion_model.* of SD1.5 / SD2.x
    transformers = [v for v in module_map.values() if type(modules[v]).__name__ == "Transformer2DModel"]
    assert len(transformers) == 16  # SpatialTransformers: 6 input, 1 middle, 9 output


def test_unet_map_of_sd15_known_names() -> None:
    module_map = lc.unet_module_map(sd_unet_on_meta("sd1").config)
    known = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "input_blocks.2.0.emb_layers.1": "down_blocks.0.resnets.1.time_emb_proj",
        "input_blocks.3.0.op": "down_blocks.0.downsamplers.0.conv",
        "input_blocks.4.0.skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
        "input_blocks.8.1.transformer_blocks.0.ff.net.2": "down_blocks.2.attentions.1.transformer_blocks.0.ff.net.2",
        "input_blocks.9.0.op": "down_blocks.2.downsamplers.0.conv",
        "input_blocks.11.0.out_layers.3": "down_blocks.3.resnets.1.conv2",
        "middle_block.0.in_layers.2": "mid_block.resnets.0.conv1",
        "middle_block.1.proj_in": "mid_block.attentions.0.proj_in",
        "middle_block.2.out_layers.0": "mid_block.resnets.1.norm2",
        "output_blocks.0.0.skip_connection": "up_blocks.0.resnets.0.conv_shortcut",
        "output_blocks.2.1.conv": "up_blocks.0.upsamplers.0.conv",
        "output_blocks.3.1": "up_blocks.1.attentions.0",
        "output_blocks.5.2.conv": "up_blocks.1.upsamplers.0.conv",
        "output_blocks.8.2.conv": "up_blocks.2.upsamplers.0.conv",
        "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0": "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    for ldm_name, diffusers_name in known.items():
        assert module_map[ldm_name] == diffusers_name
    for absent in ("input_blocks.1.0.skip_connection", "input_blocks.10.1", "input_blocks.12.0", "output_blocks.2.2", "output_blocks.12.0"):
        assert absent not in module_map
    assert sum(k.endswith("skip_connection") for k in module_map) == 14


def test_vae_map_of_real_config() -> None:
    with torch.device("meta"):
        vae = AutoencoderKL(**sd_configs.vae_config())
    module_map = lc.vae_module_map(vae.config)
    assert set(module_map.values()) <= set(dict(vae.named_modules()))
    assert param_owners(vae) <= set(module_map.values())
    assert len(vae.state_dict()) == 248
    assert module_map["decoder.up.3.upsample.conv"] == "decoder.up_blocks.0.upsamplers.0.conv"
    assert module_map["decoder.up.1.block.0.nin_shortcut"] == "decoder.up_blocks.2.resnets.0.conv_shortcut"
    assert module_map["encoder.mid.attn_1.proj_out"] == "encoder.mid_block.attentions.0.to_out.0"
    assert "decoder.up.0.upsample.conv" not in module_map


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_text_encoder_configs_build(family: str) -> None:
    config = sd_configs.text_encoder_config(family)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    params = sum(p.numel() for p in model.parameters())
    # openai ViT-L/14 text: 123.06M; OpenCLIP ViT-H text without its last block: 340.39M
    assert params == (123_060_480 if family == "sd1" else 340_387_840)


def test_scheduler_kwargs() -> None:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**sd_configs.scheduler_kwargs("sd1"))
    assert scheduler.alphas_cumprod.shape == (1000,)
    torch.testing.assert_close(scheduler.alphas_cumprod[-1], torch.tensor(0.0047), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        sd_configs.unet_config("sdxl-refiner")


# ------------------------------------------------------------------ family & errors


def test_detect_family_from_text_encoder_or_context_width() -> None:
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert lc.detect_family({k: torch.zeros(320, 768)}) == "sd1"
    assert lc.detect_family({k: torch.zeros(320, 1024)}) == "sd2"
    assert lc.detect_family({k: torch.zeros(320, 8), "cond_stage_model.model.ln_final.weight": torch.zeros(8)}) == "sd2"
    with pytest.raises(CheckpointError, match="cannot tell SD1 from SD2"):
        lc.detect_family({k: torch.zeros(320, 8)})


def test_sdxl_base_is_detected_refiner_and_inpainting_are_refused() -> None:
    clip_l = "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"
    big_g = "conditioner.embedders.1.model.ln_final.weight"
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    base = {conv_in: torch.zeros(320, 4, 3, 3), clip_l: torch.zeros(1), big_g: torch.zeros(1)}
    assert lc.detect_family(base, "xl.safetensors") == "sdxl"
    refiner = {conv_in: torch.zeros(384, 4, 3, 3), "conditioner.embedders.0.model.ln_final.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="refiner"):
        lc.detect_family(refiner, "refiner.safetensors")
    with pytest.raises(CheckpointError, match="inpainting"):
        lc.detect_family({**base, conv_in: torch.zeros(320, 9, 3, 3)}, "xl-inpaint.safetensors")


@pytest.mark.parametrize(
    "keys,hint",
    [
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "LoRA"),
        (["state_dict"], "unwrapped"),
        (["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"], "diffusers model component"),
        (["foo.bar"], "model.diffusion_model"),
    ],
)
def test_non_sd_files_are_refused(keys: list[str], hint: str) -> None:
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint") as info:
        lc.detect_family({k: torch.zeros(1) for k in keys}, "thing.safetensors")
    assert hint in str(info.value) and "thing.safetensors" in str(info.value)


def test_unexpected_unet_key_names_it() -> None:
    unet, vae, text = tiny_models("sd1", layers=1)
    ldm = to_ldm(unet, vae, text, "sd1")
    ldm["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(1)  # unCLIP-style extra
    with pytest.raises(CheckpointError, match="label_emb"):
        lc.ldm_to_diffusers(ldm, unet.config, vae.config, text.config, "sd1")


def test_missing_vae_or_wrong_family_is_reported() -> None:
    unet, vae, text = tiny_models("sd1", layers=1)
    ldm = to_ldm(unet, vae, text, "sd1")
    with pytest.raises(CheckpointError, match="no text encoder weights"):
        lc.ldm_to_diffusers(ldm, unet.config, vae.config, text.config, "sd2")
    no_vae = {k: v for k, v in ldm.items() if not k.startswith(lc.VAE_PREFIX)}
    with pytest.raises(CheckpointError, match="no VAE weights"):
        lc.ldm_to_diffusers(no_vae, unet.config, vae.config, text.config, "sd1")


def test_load_converted_reports_shape_mismatch() -> None:
    unet, vae, text = tiny_models("sd1", layers=1)
    unet_sd = dict(unet.state_dict())
    unet_sd["conv_in.weight"] = torch.zeros(32, 9, 3, 3)  # an inpainting UNet
    with pytest.raises(CheckpointError, match="wrong shape 1 .*conv_in.weight"):
        lc.load_converted(unet, unet_sd, "UNet", "inpaint.safetensors")
