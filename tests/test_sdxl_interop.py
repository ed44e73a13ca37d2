"""Our SDXL LoRA files load in current diffusers' StableDiffusionXLPipeline (kohya format, sgm
block names) and give the same UNet and text-encoder outputs as our hooked model; our prompt
encoding equals the pipeline's own."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import small_config
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape
from lib_training.models.adapter import SizeConditioning
from lib_training.models.tiny import tiny_sdxl_adapter
from lib_training.train.loop import train

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None,
    reason="needs diffusers + peft (the `current` env): run `bash tests/run.sh` or "
           "`.venv-tests/current/bin/python -m pytest tests/test_sdxl_interop.py`",
)


def _pipeline(model):
    import copy

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, tokenizer_2 = copy.deepcopy(model.tokenizer), copy.deepcopy(model.tokenizer)
    tokenizer.model_max_length = tokenizer_2.model_max_length = 77  # as in the hub's tokenizer_config.json
    tokenizer_2.pad_token = "!"  # as stabilityai's tokenizer_2: bigG pads with token 0
    return StableDiffusionXLPipeline(
        vae=model.vae(), text_encoder=model.clip_l, text_encoder_2=model.big_g, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=model.unet(),
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    )


def test_prompt_encoding_equals_the_sdxl_pipelines():
    model = tiny_sdxl_adapter(seed=5)
    pipe = _pipeline(model)
    with torch.no_grad():
        context, _, pooled, _ = pipe.encode_prompt(["sks cat, sitting", "a dog"], do_classifier_free_guidance=False)
        ours = model.encode_prompts(["sks cat, sitting", "a dog"])
    torch.testing.assert_close(ours["context"], context)
    torch.testing.assert_close(ours["pooled"], pooled)


@pytest.mark.parametrize("conv_rank", [0, 4])
def test_saved_sdxl_lora_loads_in_diffusers_and_matches_our_hooked_model(photo_dataset, tmp_path, conv_rank):
    model = tiny_sdxl_adapter(seed=3)
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=12, optimizer__unet_lr=5e-3,
                          optimizer__text_encoder_lr=5e-3, network__conv_rank=conv_rank, network__conv_alpha=2.0,
                          network__alpha=2.0)
    result = train(config, model)
    tensors, _ = load_lora(result.path)
    network = LoraNetwork.for_model(model, NetworkShape(rank=4, alpha=2.0, conv_rank=conv_rank, conv_alpha=2.0))
    network.load_kohya_state_dict(tensors)

    torch.manual_seed(0)
    latents, timestep = torch.randn(1, 4, 8, 8), torch.tensor([400])
    sizes = [SizeConditioning((80, 64), (8, 0), (64, 64))]
    prompt = ["sks cat, sitting"]
    with torch.no_grad():
        base_cond = model.encode_prompts(prompt)
        base_out = model.predict(latents, timestep, base_cond, sizes)
        with network.attached():
            our_cond = model.encode_prompts(prompt)
            our_out = model.predict(latents, timestep, our_cond, sizes)

        pipe = _pipeline(model)
        pipe.load_lora_weights(str(result.path.parent), weight_name=result.path.name)
        context, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        time_ids = torch.tensor([sizes[0].as_list()], dtype=context.dtype)
        their_out = pipe.unet(latents, timestep, encoder_hidden_states=context,
                              added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample

    assert not torch.allclose(base_cond["context"], our_cond["context"], atol=1e-4), "the TE LoRA had no effect"
    assert not torch.allclose(base_out, our_out, atol=1e-4), "the LoRA had no effect"
    torch.testing.assert_close(our_cond["context"], context, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(our_cond["pooled"], pooled, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(our_out, their_out, atol=1e-4, rtol=1e-4)
    pipe.unload_lora_weights()
