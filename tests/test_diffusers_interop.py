"""Our LoRA files load in current diffusers (+ peft) and give the same outputs as our trainer.

Runs in the `current` test environment (tests/setup_envs.sh), which has what users have:
the newest diffusers, transformers and peft. A1111's pins (transformers 4.30) cannot load
LoRAs through diffusers' PEFT backend, so there it is skipped.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import small_config
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape
from lib_training.models.tiny import tiny_adapter
from lib_training.train.loop import train

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None,
    reason="needs diffusers + peft (the `current` env): run `bash tests/run.sh` or "
           "`.venv-tests/current/bin/python -m pytest tests/test_diffusers_interop.py`",
)


def _pipeline(model):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=model.vae(), text_encoder=model.text_encoder(), tokenizer=model.tokenizer, unet=model.unet(),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.mark.parametrize("conv_rank", [0, 4])
def test_saved_lora_loads_in_diffusers_and_matches_our_hooked_model(photo_dataset, tmp_path, conv_rank):
    model = tiny_adapter("sd1", seed=3)
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=20, optimizer__unet_lr=5e-3,
                          optimizer__text_encoder_lr=5e-3, network__conv_rank=conv_rank, network__conv_alpha=2.0,
                          network__alpha=2.0)
    result = train(config, model)
    tensors, _ = load_lora(result.path)
    network = LoraNetwork.for_model(model, NetworkShape(rank=4, alpha=2.0, conv_rank=conv_rank, conv_alpha=2.0))
    network.load_kohya_state_dict(tensors)

    torch.manual_seed(0)
    latents, timestep = torch.randn(1, 4, 8, 8), torch.tensor([400])
    ids = model.tokenize(["sks cat, sitting"])
    with torch.no_grad():
        base_cond = model.text_encoder()(ids)[0]
        base_out = model.unet()(latents, timestep, encoder_hidden_states=base_cond).sample
        with network.attached():
            our_cond = model.text_encoder()(ids)[0]
            our_out = model.unet()(latents, timestep, encoder_hidden_states=our_cond).sample

        pipe = _pipeline(model)
        pipe.load_lora_weights(str(result.path.parent), weight_name=result.path.name)
        their_cond = pipe.text_encoder(ids)[0]
        their_out = pipe.unet(latents, timestep, encoder_hidden_states=their_cond).sample

    assert not torch.allclose(base_cond, our_cond, atol=1e-4), "the text-encoder LoRA had no effect"
    assert not torch.allclose(base_out, our_out, atol=1e-4), "the LoRA had no effect"
    assert torch.allclose(our_cond, their_cond, atol=1e-4), (our_cond - their_cond).abs().max()
    assert torch.allclose(our_out, their_out, atol=1e-4), (our_out - their_out).abs().max()
    pipe.unload_lora_weights()
