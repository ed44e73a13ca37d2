"""AdamW8bit: built from bitsandbytes when it loads on a CUDA device, refused with the reason otherwise.

bitsandbytes is not in the test environments (it needs CUDA); a stand-in module at its import
boundary checks the wiring. bench/gpu_check.py runs the real one on a lent GPU (case sd15_8bit).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lib_training.config import OptimizerSettings
from lib_training.errors import SettingsError
from lib_training.train import optim


class FakeAdamW8bit(torch.optim.AdamW):
    pass


@pytest.fixture
def fake_bitsandbytes(monkeypatch):
    module = types.ModuleType("bitsandbytes")
    module.optim = types.SimpleNamespace(AdamW8bit=FakeAdamW8bit)
    module.__spec__ = types.SimpleNamespace(name="bitsandbytes")
    monkeypatch.setitem(sys.modules, "bitsandbytes", module)
    monkeypatch.setattr(optim.importlib.util, "find_spec", lambda name: object() if name == "bitsandbytes" else None)
    return module


def groups():
    return [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 1e-4},
            {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 5e-5}]


def test_adamw8bit_is_built_with_both_learning_rates_when_bitsandbytes_loads(fake_bitsandbytes):
    settings = OptimizerSettings(optimizer="adamw8bit", weight_decay=0.02)
    built = optim.build_optimizer(settings, groups(), torch.device("cuda"))
    assert isinstance(built, FakeAdamW8bit)
    assert [g["lr"] for g in built.param_groups] == [1e-4, 5e-5] and built.defaults["weight_decay"] == 0.02


def test_adamw8bit_is_refused_with_the_reason(monkeypatch, fake_bitsandbytes):
    settings = OptimizerSettings(optimizer="adamw8bit")
    with pytest.raises(SettingsError, match="needs a CUDA GPU"):
        optim.build_optimizer(settings, groups(), torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # importing it raises ImportError
    with pytest.raises(SettingsError, match="does not load here"):
        optim.build_optimizer(settings, groups(), torch.device("cuda"))
    monkeypatch.setattr(optim.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SettingsError, match="not installed"):
        optim.build_optimizer(settings, groups(), torch.device("cuda"))
