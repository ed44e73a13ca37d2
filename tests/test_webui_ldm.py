"""The WebUI backend on real ldm models (the classes A1111 keeps loaded), without A1111.

Needs the `ldm` package (a1111 test env: stable-diffusion-sdkit --no-deps). The diffusers
side is built with diffusers' own ldm converter, so names and weights are checked against
an independent implementation, not against our own ldm_convert.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("ldm", reason="the ldm package is installed only in the a1111 test env; run `bash tests/run.sh`")

from conftest import small_config, write_photos  # noqa: E402
from tiny_ldm import build_tiny_ldm, ldm_config  # noqa: E402

from lib_training.lora.io import load_lora  # noqa: E402
from lib_training.lora.network import LoraNetwork, NetworkShape, select_targets  # noqa: E402
from lib_training.models.adapter import EPSILON, V_PREDICTION, ModelInfo  # noqa: E402
from lib_training.models.diffusers_backend import DiffusersAdapter  # noqa: E402
from lib_training.models.clip_tokenizer import load_clip_tokenizer  # noqa: E402
from lib_training.train.loop import train  # noqa: E402
from lib_training.webui.backend.ldm_adapter import LdmAdapter, ldm_family, prediction_type  # noqa: E402


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("ldm")


@pytest.fixture(scope="module")
def sd1_ldm(ldm_folder):
    return build_tiny_ldm(ldm_folder, "sd1", seed=0)


def adapter_for(sd_model) -> LdmAdapter:
    info = ModelInfo(family=ldm_family(sd_model), prediction_type=prediction_type(sd_model), name="tiny-ldm.safetensors")
    return LdmAdapter(sd_model, info)


def diffusers_twin(sd_model, family: str, clip_dir) -> DiffusersAdapter:
    """The same weights in diffusers classes, converted by diffusers' own converter."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.convert_from_ckpt import (
        convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, create_unet_diffusers_config,
        create_vae_diffusers_config)

    original = {"model": {"params": ldm_config(family, clip_dir)}}
    checkpoint = {k: v.clone() for k, v in sd_model.state_dict().items()}
    unet_config = create_unet_diffusers_config(original, image_size=8)
    unet = UNet2DConditionModel(**unet_config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, unet_config))
    vae_config = create_vae_diffusers_config(original, image_size=64)
    vae = AutoencoderKL(**vae_config)
    vae.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, vae_config))
    text_encoder = copy.deepcopy(sd_model.cond_stage_model.transformer)
    info = ModelInfo(family=family, prediction_type=prediction_type(sd_model))
    twin = DiffusersAdapter(unet, vae, text_encoder, load_clip_tokenizer(), info)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return twin


def snapshot(module: torch.nn.Module) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in module.named_parameters()},
        "modes": {k: m.training for k, m in module.named_modules()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()),
        "checkpoint": {k: (getattr(m, "checkpoint", None), getattr(m, "use_checkpoint", None))
                       for k, m in module.named_modules()},
        "dicts": {k: sorted(m.__dict__) for k, m in module.named_modules()},
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before["params"]:
        assert torch.equal(before["params"][key], after["params"][key]), key
    for field in ("grad", "modes", "hooks", "checkpoint", "dicts"):
        assert before[field] == after[field], field


class OpenClipLike(torch.nn.Module):
    """Stands in for ldm's FrozenOpenCLIPEmbedder (whose weights need a download): same call,
    no HF `transformer.text_model` inside."""

    def __init__(self, clip_embedder):
        super().__init__()
        self.model = clip_embedder

    def forward(self, texts):
        return self.model(texts)


def test_family_and_prediction_type_are_read_off_the_model(ldm_folder, sd1_ldm):
    assert ldm_family(sd1_ldm) == "sd1" and prediction_type(sd1_ldm) == EPSILON
    sd2 = build_tiny_ldm(ldm_folder, "sd2", seed=0)
    assert ldm_family(sd2) == "sd2" and prediction_type(sd2) == V_PREDICTION


@pytest.mark.parametrize("conv_rank", [0, 4])
def test_kohya_names_match_a_diffusers_model_converted_by_diffusers(ldm_folder, sd1_ldm, conv_rank):
    ours = {t.kohya_name for t in select_targets(adapter_for(sd1_ldm), NetworkShape(4, 4, conv_rank, 1, True))}
    twin = diffusers_twin(sd1_ldm, "sd1", ldm_folder / "clip")
    expected = {t.kohya_name for t in select_targets(twin, NetworkShape(4, 4, conv_rank, 1, True))}
    assert ours == expected
    assert any(name.startswith("lora_te_text_model_encoder_layers_") for name in ours)
    assert len(ours) > (20 if conv_rank == 0 else 40)


def test_schedule_prefers_the_original_alphas(sd1_ldm):
    # A stand-in with the loaded model's parts: A1111 keeps the training schedule as
    # alphas_cumprod_original when it replaces alphas_cumprod for sampling.
    model = SimpleNamespace(model=sd1_ldm.model, alphas_cumprod_original=sd1_ldm.alphas_cumprod.clone(),
                            alphas_cumprod=torch.ones_like(sd1_ldm.alphas_cumprod))
    info = ModelInfo(family="sd1", prediction_type=EPSILON)
    assert torch.equal(LdmAdapter(model, info).alphas_cumprod, sd1_ldm.alphas_cumprod.float())
    del model.alphas_cumprod_original
    assert torch.equal(LdmAdapter(model, info).alphas_cumprod, model.alphas_cumprod)


def test_trains_on_the_ldm_model_and_the_file_means_the_same_in_diffusers(ldm_folder, sd1_ldm, photo_dataset, tmp_path):
    adapter = adapter_for(sd1_ldm)
    unet_before = snapshot(sd1_ldm.model.diffusion_model)
    text_before = snapshot(sd1_ldm.cond_stage_model)
    assert any(p.requires_grad for p in sd1_ldm.model.diffusion_model.parameters()), "A1111 leaves the UNet trainable"
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=4, optimizer__unet_lr=5e-3,
                          optimizer__text_encoder_lr=1e-3)
    result = train(config, adapter)

    # The loaded model is exactly as found: weights, requires_grad, modes, hooks, ldm's checkpoint flags.
    assert_same_snapshot(unet_before, snapshot(sd1_ldm.model.diffusion_model))
    assert_same_snapshot(text_before, snapshot(sd1_ldm.cond_stage_model))

    tensors, metadata = load_lora(result.path)
    ups = {k: v for k, v in tensors.items() if k.endswith("lora_up.weight")}
    # ldm's own checkpointing is on in this model; LoRA grads flowed anyway (ups moved off zero).
    assert all(v.abs().sum() > 0 for k, v in ups.items() if k.startswith("lora_unet_")), "UNet LoRA got no gradient"
    assert any(v.abs().sum() > 0 for k, v in ups.items() if k.startswith("lora_te_"))
    assert metadata["ss_sd_model_name"] == "tiny-ldm.safetensors"

    # The same file on the diffusers twin gives the ldm model's output with the LoRA.
    twin = diffusers_twin(sd1_ldm, "sd1", ldm_folder / "clip")
    ldm_net = LoraNetwork.for_model(adapter, NetworkShape(4, 4, 0, 1, True))
    ldm_net.load_kohya_state_dict(tensors)
    twin_net = LoraNetwork.for_model(twin, NetworkShape(4, 4, 0, 1, True))
    twin_net.load_kohya_state_dict(tensors)
    torch.manual_seed(3)
    latents, t = torch.randn(2, 4, 8, 8), torch.tensor([50, 700])
    with torch.no_grad():
        base = adapter.predict(latents, t, adapter.encode_prompts(["sks cat", "a dog"]))
        assert torch.allclose(base, twin.predict(latents, t, twin.encode_prompts(["sks cat", "a dog"])), atol=1e-5)
        with ldm_net.attached():
            ours = adapter.predict(latents, t, adapter.encode_prompts(["sks cat", "a dog"]))
        with twin_net.attached():
            theirs = twin.predict(latents, t, twin.encode_prompts(["sks cat", "a dog"]))
    assert (ours - base).abs().max() > 1e-3, "the trained LoRA does not change the output"
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert_same_snapshot(unet_before, snapshot(sd1_ldm.model.diffusion_model))


def test_gradient_checkpointing_on_ldm_gives_the_same_gradients(sd1_ldm):
    adapter = adapter_for(sd1_ldm)
    from lib_training.train.guard import frozen, gradient_checkpointing

    def lora_grads(checkpointing: bool) -> dict:
        torch.manual_seed(0)
        network = LoraNetwork.for_model(adapter, NetworkShape(4, 4, 0, 1, True))
        for module in network:
            torch.nn.init.normal_(module.lora_up.weight, std=0.01)
        with adapter.prepared_for_training(), frozen([adapter.unet(), adapter.text_encoder()]), network.attached(), \
                gradient_checkpointing(adapter.checkpoint_units(), checkpointing):
            torch.manual_seed(1)
            out = adapter.predict(torch.randn(1, 4, 8, 8), torch.tensor([100]), adapter.encode_prompts(["sks"]))
            out.square().mean().backward()
        return {name: p.grad.clone() for name, p in network.named_parameters()}

    plain, checkpointed = lora_grads(False), lora_grads(True)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
    assert sum(g.abs().sum() for g in plain.values()) > 0


def test_dreambooth_on_ldm_passes_instance_and_class_images_as_one_batch(sd1_ldm, photo_dataset, tmp_path):
    """The joined instance + class batch through A1111's model: the first step's loss is still
    instance + weight x class (linear in the weight, same batches and noise)."""
    write_photos(tmp_path / "reg" / "1_cat", names=("coffee", "rocket"))
    adapter = adapter_for(sd1_ldm)
    first = {}
    for weight in (0.0, 1.0, 2.0):
        config = small_config(photo_dataset, tmp_path / f"out{weight}", train__max_steps=1,
                              data__reg_dir=str(tmp_path / "reg"), data__prior_loss_weight=weight)
        first[weight] = train(config, adapter).losses[0][1]
    assert first[1.0] > first[0.0]
    assert first[2.0] - first[1.0] == pytest.approx(first[1.0] - first[0.0], rel=1e-4)


def test_sd2_ldm_trains_unet_only_with_v_prediction(ldm_folder, photo_dataset, tmp_path):
    from lib_training.webui.backend.bridge import fit_to_model

    sd2 = build_tiny_ldm(ldm_folder, "sd2", seed=0)
    sd2.cond_stage_model = OpenClipLike(sd2.cond_stage_model)  # SD2's text encoder is not HF CLIP
    adapter = adapter_for(sd2)
    assert not adapter.text_encoder_trainable
    config, notes = fit_to_model(small_config(photo_dataset, tmp_path / "out", train__max_steps=2), adapter)
    assert not config.network.train_text_encoder and "UNet only" in notes[0]
    result = train(config, adapter)
    tensors, metadata = load_lora(result.path)
    assert metadata["ss_base_model_version"] == "sd_v2_v"
    assert all(k.startswith("lora_unet_") for k in tensors)
    # SD2 UNets project with Linear layers; the saved proj_in is 2-D.
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].dim() == 2


def test_a_caption_over_three_chunks_reaches_the_text_encoder_cut_at_a_tag(sd1_ldm, monkeypatch):
    """A1111's wrapper would encode every 75-token chunk of a scraped 3,000-tag caption (memory
    without bound); the adapter hands it at most MAX_PROMPT_TOKENS tokens, ending on a whole tag."""
    from lib_training.webui.backend.ldm_adapter import MAX_PROMPT_TOKENS

    seen: list = []
    wrapper = sd1_ldm.cond_stage_model
    encode = wrapper.forward
    monkeypatch.setattr(wrapper, "forward", lambda prompts: (seen.extend(prompts), encode(prompts))[1])
    long_caption = ", ".join(f"blue sky {i}" for i in range(3000))
    adapter_for(sd1_ldm).encode_prompts([long_caption, "a photo of sks"])
    count = lambda text: len(load_clip_tokenizer()(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    capped, short = seen
    assert short == "a photo of sks"
    assert long_caption.startswith(capped) and long_caption[len(capped)] == ","
    assert MAX_PROMPT_TOKENS - 10 < count(capped) <= MAX_PROMPT_TOKENS
