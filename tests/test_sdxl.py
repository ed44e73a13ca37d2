"""SDXL in the engine: kohya's names and metadata, the conditioning, the single-file checkpoint,
and a tiny SDXL (real diffusers/transformers classes) that trains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import small_config
from lib_training.data.dataset import Sample, size_conditioning
from lib_training.data.folders import ImageItem
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape, select_targets
from lib_training.models import sd_configs
from lib_training.models.adapter import V_PREDICTION, ModelInfo, SizeConditioning
from lib_training.models.sdxl_backend import SdxlAdapter
from lib_training.models.single_file import load_checkpoint, save_sdxl_checkpoint
from lib_training.models.tiny import build_sdxl_models, tiny_sdxl_adapter, tiny_sdxl_configs
from lib_training.train.loop import train
from lib_training.webui.backend.outputs import sd_version_of
from test_training import fixed_diffusion_loss, network_from_file
from test_cli import _run_cli

PINNED = json.loads((Path(__file__).parent / "data" / "sdxl_kohya_lora_names.json").read_text())


@pytest.fixture(scope="module")
def sdxl_model():
    return tiny_sdxl_adapter(seed=0)


def _meta_sdxl() -> SdxlAdapter:
    """The real SDXL base architecture on the meta device: names and shapes, no memory."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        parts = (UNet2DConditionModel(**sd_configs.unet_config("sdxl")), AutoencoderKL(**sd_configs.vae_config("sdxl")),
                 CLIPTextModel(sd_configs.text_encoder_config("sdxl")),
                 CLIPTextModelWithProjection(sd_configs.sdxl_text_encoder_2_config()))
    return SdxlAdapter(*parts, tokenizer=None, info=ModelInfo("sdxl", "epsilon"))


def _sizes(targets) -> dict[str, list[int]]:
    def size(module):
        if isinstance(module, torch.nn.Linear):
            return [module.in_features, module.out_features]
        return [module.in_channels, module.out_channels]
    return {t.kohya_name: size(t.module) for t in targets if t.kohya_name.startswith("lora_unet")}


def test_real_sdxl_names_and_counts_equal_kohyas_pinned_list():
    model = _meta_sdxl()
    targets = select_targets(model, NetworkShape(rank=16, alpha=8))
    unet = _sizes(targets)
    text = [t.kohya_name for t in targets if t.kohya_name.startswith("lora_te")]
    assert len(unet) == 722 and len(text) == 72 + 192
    assert unet == PINNED["unet_default"]
    assert sorted(text) == sorted(PINNED["text_encoders"])
    assert sum(n.startswith("lora_te1_") for n in text) == 72 and sum(n.startswith("lora_te2_") for n in text) == 192
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in unet
    conv = _sizes(select_targets(model, NetworkShape(rank=16, alpha=8, conv_rank=4, conv_alpha=1, text_encoder=False)))
    assert conv == {**PINNED["unet_default"], **PINNED["unet_conv_extra"]}


def test_size_conditioning_is_kohyas_crop_math():
    item = ImageItem(Path("x.png"), "", 1, False, "s")
    wide = Sample(item, bucket=(1216, 832), original_size=(3000, 2000))  # image a bit less wide than the bucket
    # kohya: resized width 832*1.5 = 1248 > 1216, so the *height* is fitted: 1216/1.5 = 810.67 -> top 10
    assert size_conditioning(wide, False) == SizeConditioning((2000, 3000), (10, 0), (832, 1216))
    tall = Sample(item, bucket=(832, 1216), original_size=(800, 1600))
    cond = size_conditioning(tall, False)  # fitted width 608 -> left (832-608)//2 = 112, right 720
    assert cond == SizeConditioning((1600, 800), (0, 112), (1216, 832))
    assert size_conditioning(tall, True).crop_top_left == (0, 832 - 720)
    assert size_conditioning(Sample(item, (64, 64)), False).as_list() == [64, 64, 0, 0, 64, 64]


def test_prompts_become_the_2048_wide_context_and_bigGs_pooled_output(sdxl_model):
    cond = sdxl_model.encode_prompts(["sks cat, sitting", "a dog"])
    ids = sdxl_model.tokenize(["sks cat, sitting"])
    hidden_l = sdxl_model.clip_l(ids, output_hidden_states=True).hidden_states[-2]
    ids_g = ids.clone()
    end = int((ids[0] == sdxl_model.tokenizer.eos_token_id).nonzero()[0])
    ids_g[0, end + 1:] = 0  # bigG's prompt pads with token 0
    out_g = sdxl_model.big_g(ids_g, output_hidden_states=True)
    assert cond["context"].shape == (2, 77, 32 + 32) and cond["pooled"].shape == (2, 32)
    torch.testing.assert_close(cond["context"][0], torch.cat([hidden_l, out_g.hidden_states[-2]], -1)[0])
    torch.testing.assert_close(cond["pooled"][0], out_g.text_embeds[0])


def test_size_conditioning_reaches_the_unet(sdxl_model):
    cond = sdxl_model.encode_prompts(["sks cat"])
    latents, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([300])
    with torch.no_grad():
        square = sdxl_model.predict(latents, t, cond)
        same = sdxl_model.predict(latents, t, cond, [SizeConditioning((64, 64), (0, 0), (64, 64))])
        cropped = sdxl_model.predict(latents, t, cond, [SizeConditioning((128, 96), (8, 0), (64, 64))])
    torch.testing.assert_close(square, same)
    assert not torch.allclose(square, cropped)


def test_tiny_sdxl_trains_and_the_file_is_kohyas_sdxl_lora(sdxl_model, photo_dataset, tmp_path):
    before = fixed_diffusion_loss(sdxl_model, photo_dataset)
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=40, optimizer__unet_lr=5e-3,
                          network__rank=8, network__alpha=8.0)
    result = train(config, sdxl_model)
    network = network_from_file(sdxl_model, result.path, 8, 8.0)
    after = fixed_diffusion_loss(sdxl_model, photo_dataset, network)
    print(f"tiny SDXL fixed-noise diffusion loss {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before  # measured 1.107 -> 1.011 (0.91); untrained stays at 1.0
    tensors, meta = load_lora(result.path)
    names = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".alpha")}
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k" in names
    assert not any("down_blocks" in n or n.startswith("lora_te_") for n in names)
    assert network.count("lora_te1") == 12 and network.count("lora_te2") == 12
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "64x64"
    assert sd_version_of(result.path) == "SDXL"  # what A1111's Lora tab reads to show it under an SDXL model


def test_v_prediction_sdxl_trains_on_the_v_target(photo_dataset, tmp_path):
    model = tiny_sdxl_adapter(seed=1, prediction_type=V_PREDICTION)
    result = train(small_config(photo_dataset, tmp_path / "out", train__max_steps=3), model)
    _, meta = load_lora(result.path)
    assert meta["ss_v_parameterization"] == "True" and meta["modelspec.prediction_type"] == "v"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_sdxl_single_file_checkpoint_loads_offline_and_predicts_as_the_original(tmp_path):
    configs = tiny_sdxl_configs()
    unet, vae, clip_l, big_g = build_sdxl_models(configs, seed=4)
    path = save_sdxl_checkpoint(tmp_path / "tiny-xl.safetensors", unet, vae, clip_l, big_g, configs)
    loaded = load_checkpoint(path)
    original = SdxlAdapter(unet, vae, clip_l, big_g, loaded.tokenizer, loaded.info)
    assert isinstance(loaded, SdxlAdapter) and loaded.info.family == "sdxl"
    assert loaded.info.prediction_type == "epsilon" and loaded.vae_scaling_factor == sd_configs.SDXL_LATENT_SCALE
    latents, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    sizes = [SizeConditioning((96, 80), (4, 0), (64, 64))] * 2
    with torch.no_grad():
        ours = loaded.predict(latents, t, loaded.encode_prompts(["a", "sks cat"]), sizes)
        theirs = original.predict(latents, t, original.encode_prompts(["a", "sks cat"]), sizes)
    torch.testing.assert_close(ours, theirs)
    # NoobAI-style v-prediction files say so with a `v_pred` key
    from safetensors.torch import load_file, save_file
    tensors = load_file(path)
    save_file({**tensors, "v_pred": torch.zeros(0)}, tmp_path / "vpred.safetensors",
              {"lora_studio.configs": json.dumps(configs)})
    assert load_checkpoint(tmp_path / "vpred.safetensors").info.prediction_type == V_PREDICTION


def test_vae_encode_falls_back_to_fp32_when_fp16_overflows():
    model = tiny_sdxl_adapter(seed=2)
    with torch.no_grad():  # a weight that overflows fp16 (max 65504) but not fp32
        model.vae().encoder.conv_in.weight.mul_(1e5)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    reference = model.encode_images(pixels)
    model.vae().to(torch.float16)
    with torch.no_grad():
        raw = model.vae().encode(pixels.half()).latent_dist.mean
    assert not torch.isfinite(raw).all(), "the test needs an fp16 overflow"
    torch.manual_seed(0)
    latents = model.encode_images(pixels)
    assert torch.isfinite(latents).all() and next(model.vae().parameters()).dtype == torch.float16
    torch.testing.assert_close(latents.float(), reference, rtol=1e-2, atol=1e-2)


def test_cli_trains_on_an_sdxl_single_file_checkpoint(tmp_path):
    configs = tiny_sdxl_configs()
    path = save_sdxl_checkpoint(tmp_path / "tiny-xl.safetensors", *build_sdxl_models(configs, seed=6), configs)
    from conftest import write_photos
    write_photos(tmp_path / "data" / "2_sks cat", names=("chelsea", "rocket"))
    proc = _run_cli("train", "--checkpoint", str(path), "--data", str(tmp_path / "data"), "--output-dir",
                    str(tmp_path / "Lora"), "--name", "xl", "--steps", "3", "--resolution", "64", "--rank", "4",
                    "--te-lr", "1e-4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    tensors, meta = load_lora(tmp_path / "Lora" / "xl.safetensors")
    assert meta["ss_sd_model_name"] == "tiny-xl.safetensors" and meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {k.split("_")[1] for k in tensors} == {"unet", "te1", "te2"}


def test_sdxl_buckets_are_sized_by_area_around_1024():
    from lib_training.data.buckets import assign_bucket, make_buckets

    buckets = make_buckets(1024)
    assert {(1024, 1024), (832, 1216), (1216, 832), (768, 1344), (896, 1152)} <= set(buckets)  # SDXL's own sizes
    assert all(w * h <= 1024 ** 2 and max(w, h) <= 2048 and w % 64 == 0 == h % 64 for w, h in buckets)
    assert assign_bucket(2000, 3000, buckets) == (832, 1216) and assign_bucket(1920, 1080, buckets) == (1344, 768)
    assert max(max(b) for b in make_buckets(512)) == 1024  # SD 1.x keeps kohya's 1024 cap


def test_random_real_size_builder_fills_every_weight_in_the_save_dtype(tmp_path):
    """tools/random_checkpoint.py's real-size path (meta build, fill in fp16), on the tiny shapes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from random_checkpoint import _random_sdxl_in

    configs = tiny_sdxl_configs()
    models = _random_sdxl_in(configs, torch.float16, seed=0)
    for model in models:
        for name, param in model.named_parameters():
            assert param.dtype == torch.float16 and param.device.type == "cpu" and torch.isfinite(param).all(), name
            if param.dim() > 1:
                assert param.float().std() > 0, name
    path = save_sdxl_checkpoint(tmp_path / "r.safetensors", *models, configs, dtype=torch.float16)
    loaded = load_checkpoint(path)
    with torch.no_grad():
        out = loaded.predict(torch.randn(1, 4, 8, 8), torch.tensor([500]), loaded.encode_prompts(["a cat"]))
    assert torch.isfinite(out).all() and out.std() > 0
