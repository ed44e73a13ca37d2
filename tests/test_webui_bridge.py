"""The A1111-facing checks of the bridge, with A1111's pieces faked at their boundary.

The same code runs against a real A1111 in tests/test_webui_live.py (WEBUI_DIR).
"""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch
from torch import nn

from lib_training.errors import CheckpointError, SettingsError
from lib_training.webui.backend import bridge


def fake_sd_model(dtype=torch.float32) -> SimpleNamespace:
    unet = nn.Sequential(nn.Linear(4, 4)).to(dtype)
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=unet))


def test_lowvram_is_refused_with_what_to_do():
    with pytest.raises(SettingsError, match="--lowvram"):
        bridge.check_supported(fake_sd_model(torch.float32), SimpleNamespace(lowvram=True), torch.device("cuda"))


@pytest.mark.parametrize("dtype, device", [
    (torch.float32, "cpu"), (torch.float16, "cuda"), (torch.float16, "cpu"), (torch.bfloat16, "cpu"),
    (getattr(torch, "float8_e4m3fn", torch.float16), "cuda"), (getattr(torch, "float8_e4m3fn", torch.float16), "cpu"),
])
def test_half_and_fp8_weights_pass_on_gpu_and_cpu(dtype, device):
    # They train under autocast (tests/test_low_precision.py); --medvram works too.
    bridge.check_supported(fake_sd_model(dtype), SimpleNamespace(medvram=True), torch.device(device))


def test_no_model_is_refused():
    with pytest.raises(CheckpointError, match="No model is loaded"):
        bridge.check_supported(None, SimpleNamespace(), torch.device("cpu"))


@pytest.fixture
def fake_lora_extension(monkeypatch):
    """A1111's `networks` module as far as unmerging uses it: backups restored by copy."""
    networks = ModuleType("networks")
    networks.loaded_networks = ["a merged LoRA"]

    def restore(module):  # A1111 copies in place, without no_grad of its own
        module.weight.copy_(module.network_weights_backup)

    networks.network_restore_weights_from_backup = restore
    monkeypatch.setitem(sys.modules, "networks", networks)
    return networks


def test_unmerge_puts_back_the_clean_weights(fake_lora_extension):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))  # requires_grad, as A1111 leaves its UNet
    clean = [m.weight.detach().clone() for m in model]
    merged = model[0]
    merged.network_weights_backup = clean[0].clone()
    merged.network_current_names = (("my_lora", 1.0, 1.0, None),)
    with torch.no_grad():
        merged.weight.add_(1.0)  # what a merged LoRA does to the weight
    assert bridge.unmerge_networks(model) == 1
    assert all(torch.equal(m.weight, w) for m, w in zip(model, clean))
    assert merged.network_current_names == () and fake_lora_extension.loaded_networks == []


def test_unmerge_without_the_lora_extension_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "networks", raising=False)
    assert bridge.unmerge_networks(nn.Linear(2, 2)) == 0
