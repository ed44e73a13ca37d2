"""The LoRA network: identity at start, kohya names and shapes, exact detach, file format."""

from __future__ import annotations

import hashlib

import pytest
import safetensors
import torch
from torch import nn

from lib_training.errors import CheckpointError
from lib_training.lora.io import load_lora, save_lora
from lib_training.lora.network import LoraNetwork, NetworkShape


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def _outputs(model, prompt="a photo of sks cat"):
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        cond = model.encode_prompts([prompt])
        return cond, model.predict(latents, torch.tensor([500]), cond)


def test_fresh_lora_changes_nothing(sd1_model):
    cond_before, out_before = _outputs(sd1_model)
    network = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=2, conv_rank=4))
    with network.attached():
        cond_after, out_after = _outputs(sd1_model)
    assert torch.equal(cond_before, cond_after)
    assert torch.equal(out_before, out_after)


def test_lora_changes_output_when_trained_weights_are_nonzero_and_detach_restores(sd1_model):
    before = {"unet": _snapshot(sd1_model.unet()), "te": _snapshot(sd1_model.text_encoder())}
    _, out_before = _outputs(sd1_model)
    network = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=2))
    with torch.no_grad():
        for module in network:
            module.lora_up.weight.normal_(0, 0.1)
    with network.attached():
        assert _hooks(sd1_model.unet()) == network.count("lora_unet")
        _, out_with = _outputs(sd1_model)
    assert not torch.allclose(out_before, out_with)
    _, out_after = _outputs(sd1_model)
    assert torch.equal(out_before, out_after)
    assert _hooks(sd1_model.unet()) == 0 and _hooks(sd1_model.text_encoder()) == 0
    for name, module in (("unet", sd1_model.unet()), ("te", sd1_model.text_encoder())):
        after = module.state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in before[name])


def test_merged_weights_give_the_hooks_output_and_are_put_back_exactly(sd1_model):
    before = {"unet": _snapshot(sd1_model.unet()), "te": _snapshot(sd1_model.text_encoder())}
    network = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=2, conv_rank=4, conv_alpha=1))
    with torch.no_grad():
        for module in network:
            module.lora_up.weight.normal_(0, 0.1)
    network.set_multiplier(0.7)
    with network.attached():
        cond_hooked, out_hooked = _outputs(sd1_model)
    with network.merged():
        assert _hooks(sd1_model.unet()) == 0
        cond_merged, out_merged = _outputs(sd1_model)
    _, out_base = _outputs(sd1_model)
    assert not torch.allclose(out_base, out_hooked, atol=1e-3)
    torch.testing.assert_close(cond_merged, cond_hooked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_merged, out_hooked, rtol=1e-4, atol=1e-5)
    for name, module in (("unet", sd1_model.unet()), ("te", sd1_model.text_encoder())):
        after = module.state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in before[name]), name


def test_multiplier_and_scale_follow_kohya(sd1_model):
    network = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=2))
    module = next(iter(network))
    assert module.scale == pytest.approx(0.5)
    x = torch.randn(2, module.base.in_features) if isinstance(module.base, nn.Linear) else torch.randn(
        2, module.base.in_channels, 4, 4)
    with torch.no_grad():
        module.lora_up.weight.normal_()
        module.multiplier = 0.5
        expected = module.lora_up(module.lora_down(x)) * 0.5 * 0.5
        assert torch.allclose(module.delta(x), expected)


def _sd15_on_meta():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from lib_training.models import sd_configs
    from lib_training.models.diffusers_backend import DiffusersAdapter
    from lib_training.models.adapter import ModelInfo

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_configs.unet_config("sd1"))
        text = CLIPTextModel(sd_configs.text_encoder_config("sd1"))
    adapter = DiffusersAdapter.__new__(DiffusersAdapter)
    adapter._unet, adapter._text_encoder = unet, text
    adapter.info = ModelInfo("sd1", "epsilon")
    return adapter


def test_real_sd15_architecture_has_kohya_module_counts_names_and_shapes():
    model = _sd15_on_meta()
    network = LoraNetwork.for_model(model, NetworkShape(rank=16, alpha=8))
    assert network.count("lora_unet") == 192
    assert network.count("lora_te") == 72
    modules = network.lora_modules
    proj_in = modules["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert tuple(proj_in.lora_down.weight.shape) == (16, 320, 1, 1)  # SD1.5 proj_in is a 1x1 conv
    assert tuple(proj_in.lora_up.weight.shape) == (320, 16, 1, 1)
    to_k = modules["lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k"]
    assert tuple(to_k.lora_down.weight.shape) == (16, 768)
    assert tuple(modules["lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"]
                 .lora_up.weight.shape) == (10240, 16)
    assert "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn1_to_out_0" in modules
    te = modules["lora_te_text_model_encoder_layers_11_mlp_fc1"]
    assert tuple(te.lora_down.weight.shape) == (16, 768) and tuple(te.lora_up.weight.shape) == (3072, 16)
    assert "lora_te_text_model_encoder_layers_0_self_attn_out_proj" in modules


def test_conv_option_adds_resnet_and_sampler_convs_as_kohya():
    model = _sd15_on_meta()
    network = LoraNetwork.for_model(model, NetworkShape(rank=16, alpha=8, conv_rank=8, conv_alpha=4))
    # kohya's LoCon on SD1.5: 192 + 22 resnets x (conv1, conv2, time_emb_proj) + 14 shortcuts + 6 samplers
    assert network.count("lora_unet") == 278
    conv1 = network.lora_modules["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert tuple(conv1.lora_down.weight.shape) == (8, 320, 3, 3)
    assert tuple(conv1.lora_up.weight.shape) == (320, 8, 1, 1)
    assert conv1.alpha == 4.0
    shortcut = network.lora_modules["lora_unet_down_blocks_1_resnets_0_conv_shortcut"]
    assert shortcut.rank == 16  # 1x1 convs take the linear rank, as in kohya
    assert "lora_unet_down_blocks_0_downsamplers_0_conv" in network.lora_modules
    assert "lora_unet_up_blocks_0_upsamplers_0_conv" in network.lora_modules


def test_unet_only_has_no_text_encoder_modules(sd1_model):
    network = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=4, text_encoder=False))
    assert network.count("lora_te") == 0 and network.count("lora_unet") > 0


def test_save_writes_kohya_file_with_hashes_atomically(sd1_model, tmp_path):
    network = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=2))
    tensors = network.kohya_state_dict(torch.float16)
    path = save_lora(tmp_path / "x.safetensors", tensors, {"ss_network_dim": "4", "modelspec.title": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # no temp file left
    loaded, metadata = load_lora(path)
    assert loaded.keys() == tensors.keys()
    assert all(v.dtype == torch.float16 for k, v in loaded.items() if not k.endswith("alpha"))
    assert float(loaded["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"]) == 2.0
    # kohya's precalculate_safetensors_hashes: the file saved with only ss_* metadata,
    # sha256 of everything after the header; legacy = 64 KiB at 1 MiB.
    blob = safetensors.torch.save(tensors, {"ss_network_dim": "4"})
    header = int.from_bytes(blob[:8], "little")
    assert metadata["sshs_model_hash"] == hashlib.sha256(blob[8 + header:]).hexdigest()
    assert metadata["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def test_load_refuses_pickle_formats_and_damaged_files(tmp_path):
    pt = tmp_path / "evil.pt"
    torch.save({"a": torch.zeros(1)}, pt)
    with pytest.raises(CheckpointError, match="only safetensors|Only safetensors"):
        load_lora(pt)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_lora(broken)


def test_load_kohya_state_dict_round_trip_and_mismatch(sd1_model):
    a = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=2))
    with torch.no_grad():
        for m in a:
            m.lora_up.weight.normal_()
    b = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=2))
    b.load_kohya_state_dict(a.kohya_state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.kohya_state_dict().values(), b.kohya_state_dict().values()))
    c = LoraNetwork.for_model(sd1_model, NetworkShape(rank=8, alpha=2))
    with pytest.raises(CheckpointError, match="shape"):
        c.load_kohya_state_dict(a.kohya_state_dict())
