"""The WebUI's SDXL backend on the real `sgm` classes A1111 keeps loaded (UNetModel,
GeneralConditioner, ConcatTimestepEmbedderND), without booting A1111.

sgm is not a package on PyPI: these tests import it from an A1111 checkout's
`repositories/generative-models` and skip without one:

    WEBUI_DIR=/path/to/stable-diffusion-webui .venv-tests/a1111/bin/python -m pytest tests/test_webui_sgm.py

The text embedders are stand-ins for A1111's wrapped CLIP-L / bigG (which need the real weights):
tiny transformers CLIP models computing what A1111's do. Everything else is sgm's own code, and the
diffusers twin (same weights through our sgm -> diffusers conversion) must predict the same.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import small_config
from lib_training.errors import CheckpointError
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape, select_targets
from lib_training.models.adapter import ModelInfo, SizeConditioning
from lib_training.models.sdxl_backend import SdxlAdapter
from lib_training.models.ldm_convert import _rename_modules, unet_module_map
from lib_training.models.tiny import build_sdxl_models, tiny_sdxl_configs
from lib_training.models.clip_tokenizer import load_clip_tokenizer
from lib_training.train.loop import train
from lib_training.webui.backend.bridge import fit_to_model
from lib_training.webui.backend.sgm_adapter import SgmAdapter, sgm_family

SGM_DIR = Path(os.environ.get("WEBUI_DIR", "/nonexistent")) / "repositories" / "generative-models"
pytestmark = pytest.mark.skipif(not (SGM_DIR / "sgm").is_dir(), reason=(
    "needs sgm from an A1111 checkout: set WEBUI_DIR=/path/to/stable-diffusion-webui (with repositories/"
    "generative-models) and run with .venv-tests/a1111/bin/python"))


@pytest.fixture(scope="module")
def sgm():
    if str(SGM_DIR) not in sys.path:
        sys.path.insert(0, str(SGM_DIR))
    if importlib.util.find_spec("kornia") is None:  # only sgm's image embedders use it; A1111's venv has it
        sys.modules.setdefault("kornia", types.ModuleType("kornia"))
    from sgm.modules.diffusionmodules.openaimodel import UNetModel
    from sgm.modules.encoders.modules import AbstractEmbModel, ConcatTimestepEmbedderND, GeneralConditioner
    return SimpleNamespace(UNetModel=UNetModel, AbstractEmbModel=AbstractEmbModel,
                           ConcatTimestepEmbedderND=ConcatTimestepEmbedderND, GeneralConditioner=GeneralConditioner)


def _text_embedder(sgm, model, tokenizer, big_g: bool):
    """What A1111's FrozenCLIPEmbedderForSDXLWithCustomWords / FrozenOpenCLIPEmbedder2WithCustomWords return:
    the penultimate hidden state, and for bigG also the pooled, projected output (prompt padded with 0)."""
    class TextEmbedder(sgm.AbstractEmbModel):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, prompts):
            ids = tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                            return_tensors="pt").input_ids
            if not big_g:
                return self.model(ids, output_hidden_states=True).hidden_states[-2]
            end = (ids == tokenizer.eos_token_id).int().argmax(dim=1, keepdim=True)
            ids = torch.where(torch.arange(77)[None] > end, torch.zeros_like(ids), ids)
            out = self.model(ids, output_hidden_states=True)
            return out.hidden_states[-2], out.text_embeds

    return TextEmbedder()


def _conditioner(sgm, clip_l, big_g, tokenizer, refiner: bool = False):
    conditioner = sgm.GeneralConditioner([])
    embedders = [(_text_embedder(sgm, clip_l, tokenizer, False), "txt"),
                 (_text_embedder(sgm, big_g, tokenizer, True), "txt")]
    embedders += [(sgm.ConcatTimestepEmbedderND(8), key)
                  for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")]
    if refiner:
        embedders.append((sgm.ConcatTimestepEmbedderND(8), "aesthetic_score"))
    for embedder, key in embedders:
        embedder.is_trainable, embedder.ucg_rate, embedder.input_key, embedder.legacy_ucg_val = False, 0.0, key, None
    conditioner.embedders = nn.ModuleList([e for e, _ in embedders])
    return conditioner


class FakeEngine(nn.Module):
    """The parts of A1111's DiffusionEngine (after sd_models_xl.extend_sdxl) the adapter touches."""

    def __init__(self, unet, conditioner, vae, scale):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.conditioner, self.first_stage_model, self.scale = conditioner, vae, scale
        self.is_sdxl, self.is_sdxl_inpaint, self.parameterization = True, False, "eps"
        from lib_training.models.schedule import scaled_linear_alphas_cumprod
        self.alphas_cumprod = scaled_linear_alphas_cumprod()

    def encode_first_stage(self, x):  # sgm: sampled and scaled in one go
        return self.first_stage_model.encode(x).latent_dist.sample() * self.scale

    def get_first_stage_encoding(self, x):  # A1111 patches it to the identity for SDXL
        return x


@pytest.fixture(scope="module")
def twins(sgm):
    """(A1111-style sgm engine, SdxlAdapter over the same weights converted to diffusers)."""
    configs = tiny_sdxl_configs()
    configs["unet"] = {**configs["unet"], "norm_num_groups": 32}  # sgm's GroupNorm32
    torch.manual_seed(0)
    unet = sgm.UNetModel(adm_in_channels=80, num_classes="sequential", in_channels=4, out_channels=4,
                         model_channels=32, attention_resolutions=[2], num_res_blocks=1, channel_mult=[1, 2],
                         num_head_channels=8, use_spatial_transformer=True, use_linear_in_transformer=True,
                         transformer_depth=[1, 2], context_dim=64, legacy=False).eval()
    with torch.no_grad():  # sgm zero-initialises output layers; real weights never are
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    _, vae, clip_l, big_g = build_sdxl_models(configs, seed=1)
    tokenizer = load_clip_tokenizer()
    from diffusers import UNet2DConditionModel
    twin_unet = UNet2DConditionModel(**configs["unet"]).eval()
    twin_unet.load_state_dict(_rename_modules(unet.state_dict(), unet_module_map(configs["unet"]), "UNet"))
    engine = FakeEngine(unet, _conditioner(sgm, clip_l, big_g, tokenizer), vae, 0.13025)
    twin = SdxlAdapter(twin_unet.requires_grad_(False), vae, clip_l, big_g, tokenizer, ModelInfo("sdxl", "epsilon"))
    return engine, twin


def _adapter(engine) -> SgmAdapter:
    return SgmAdapter(engine, ModelInfo(family=sgm_family(engine), prediction_type="epsilon", name="tiny-xl"))


def test_names_are_the_sgm_paths_and_equal_the_diffusers_backends(twins):
    engine, twin = twins
    ours = {t.kohya_name for t in select_targets(_adapter(engine), NetworkShape(4, 2, conv_rank=2))}
    theirs = {t.kohya_name for t in select_targets(twin, NetworkShape(4, 2, conv_rank=2, text_encoder=False))}
    assert ours == theirs and "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k" in ours
    assert "lora_unet_output_blocks_0_0_in_layers_2" in ours  # conv LoRA on sgm's own ResBlock names


def test_conditioning_and_prediction_equal_the_diffusers_twin(twins):
    engine, twin = twins
    adapter = _adapter(engine)
    prompts = ["sks cat, sitting", "a dog"]
    ours, theirs = adapter.encode_prompts(prompts), twin.encode_prompts(prompts)
    torch.testing.assert_close(ours["context"], theirs["context"])
    torch.testing.assert_close(ours["pooled"], theirs["pooled"])
    latents, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([20, 900])
    sizes = [SizeConditioning((96, 64), (8, 0), (64, 64)), SizeConditioning((64, 64), (0, 0), (64, 64))]
    with torch.no_grad():
        torch.testing.assert_close(adapter.predict(latents, t, ours, sizes), twin.predict(latents, t, theirs, sizes),
                                   atol=1e-5, rtol=1e-4)


def test_training_on_the_sgm_engine_leaves_it_as_found_and_the_file_loads_on_the_twin(twins, photo_dataset, tmp_path):
    engine, twin = twins
    adapter = _adapter(engine)
    before = {k: v.clone() for k, v in engine.state_dict().items()}
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=4, optimizer__unet_lr=5e-3)
    config, notes = fit_to_model(config, adapter)
    assert not config.network.train_text_encoder and "UNet only" in notes[0]
    result = train(config, adapter)
    assert all(torch.equal(before[k], v) for k, v in engine.state_dict().items())
    tensors, meta = load_lora(result.path)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and not any(k.startswith("lora_te") for k in tensors)
    network = LoraNetwork.for_model(twin, NetworkShape(4, 4.0, text_encoder=False))
    network.load_kohya_state_dict(tensors)  # every key has its module on the diffusers side


def test_refiner_and_inpainting_are_refused(sgm, twins):
    engine, _ = twins
    refiner = FakeEngine(engine.model.diffusion_model, _conditioner(sgm, nn.Linear(1, 1), nn.Linear(1, 1), None,
                                                                    refiner=True), engine.first_stage_model, 0.13)
    with pytest.raises(CheckpointError, match="refiner"):
        sgm_family(refiner)
    engine.is_sdxl_inpaint = True
    try:
        with pytest.raises(CheckpointError, match="inpainting"):
            sgm_family(engine)
    finally:
        engine.is_sdxl_inpaint = False


def test_vae_encode_in_fp16_falls_back_to_fp32_on_overflow(sgm, twins):
    import copy

    engine, _ = twins
    vae = copy.deepcopy(engine.first_stage_model)
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1e5)  # overflows fp16 (max 65504), not fp32
    half = FakeEngine(engine.model.diffusion_model, engine.conditioner, vae, 0.13025)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.manual_seed(0)
    reference = _adapter(half).encode_images(pixels)
    vae.half()
    with torch.no_grad():
        assert not torch.isfinite(vae.encode(pixels.half()).latent_dist.mean).all(), "the test needs an fp16 overflow"
    torch.manual_seed(0)
    latents = _adapter(half).encode_images(pixels)
    assert torch.isfinite(latents).all() and next(vae.parameters()).dtype == torch.float16
    torch.testing.assert_close(latents, reference, rtol=1e-2, atol=1e-2)
