"""The CPU layer tuner: every way gives PyTorch's result and gradients, the faster way is
kept per shape, and the model is left as found."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from lib_training.lora.network import LoraNetwork, NetworkShape
from lib_training.train import cpu_tuning
from lib_training.train.guard import frozen
from lib_training.train.cpu_tuning import LayerTuner, conv_as_matmul, eligible, linear_weight_first, tuned_layers

CASES = [
    (nn.Linear(24, 40), (3, 5, 24)),          # 15 tokens: padded up to 16 columns
    (nn.Linear(24, 40, bias=False), (40, 24)),  # 2-D input, enough columns
    (nn.Conv2d(8, 12, 3, padding=1), (2, 8, 6, 6)),
    (nn.Conv2d(8, 12, 3, padding=1), (1, 8, 2, 2)),  # 4 pixels: padded
    (nn.Conv2d(8, 12, 3, stride=2, padding=1), (1, 8, 7, 7)),
    (nn.Conv2d(8, 12, 1, bias=False), (2, 8, 5, 5)),
    (nn.Conv2d(8, 12, (3, 1), padding=(1, 0)), (1, 8, 5, 4)),
]


@pytest.mark.parametrize("layer, shape", CASES, ids=lambda v: str(v) if isinstance(v, tuple) else type(v).__name__)
def test_every_way_matches_pytorch_forward_and_input_gradient(layer, shape):
    torch.manual_seed(0)
    layer.requires_grad_(False)
    way = linear_weight_first if isinstance(layer, nn.Linear) else conv_as_matmul
    x = torch.randn(shape, requires_grad=True)
    expected = layer(x)
    grad_out = torch.randn(expected.shape)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    got = way(layer, x)
    (got_grad,) = torch.autograd.grad(got, x, grad_out)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_the_tuner_keeps_the_faster_way_per_shape_and_times_each_shape_once(monkeypatch):
    calls = {"slow": 0, "fast": 0}

    def slow(layer, x):
        calls["slow"] += 1
        time.sleep(0.01)
        return nn.functional.linear(x, layer.weight, layer.bias)

    def fast(layer, x):
        calls["fast"] += 1
        return linear_weight_first(layer, x)

    monkeypatch.setitem(cpu_tuning.WAYS, nn.Linear, (slow, fast))
    layer = nn.Linear(6, 4).requires_grad_(False)
    tuner = LayerTuner({})
    x = torch.randn(2, 6, requires_grad=True)
    tuner.forward(layer, x)
    assert list(tuner.choice.values()) == [1]
    timed = dict(calls)
    tuner.forward(layer, x)
    assert calls == {"slow": timed["slow"], "fast": timed["fast"] + 1}  # no second timing
    with torch.no_grad():  # forward-only is another case, timed on its own
        tuner.forward(layer, x)
    assert len(tuner.choice) == 2


def test_pytorch_s_way_is_kept_unless_another_is_clearly_faster(monkeypatch):
    ticks = iter(range(10_000))
    tuner = LayerTuner({}, timer=lambda: next(ticks))  # every run takes one tick: a tie
    layer = nn.Linear(6, 4).requires_grad_(False)
    tuner.forward(layer, torch.randn(3, 6))
    assert list(tuner.choice.values()) == [0]


def test_only_frozen_float32_cpu_layers_are_tuned():
    assert eligible(nn.Linear(2, 2).requires_grad_(False))
    assert not eligible(nn.Linear(2, 2))  # trainable (a LoRA's own layers)
    assert not eligible(nn.Linear(2, 2).requires_grad_(False).half())
    assert not eligible(nn.Conv2d(2, 2, 3, groups=2).requires_grad_(False))
    assert not eligible(nn.Conv2d(2, 2, 3, padding="same").requires_grad_(False))
    assert not eligible(nn.Conv2d(2, 2, 3, dilation=2).requires_grad_(False))


def test_inside_the_context_lora_hooks_still_apply_and_outside_nothing_is_left(sd1_model):
    unet, te = sd1_model.unet(), sd1_model.text_encoder()
    with frozen([unet, te]):
        network = LoraNetwork.for_model(sd1_model, NetworkShape(rank=4, alpha=4))
        with torch.no_grad():
            for module in network:
                module.lora_up.weight.normal_(std=0.1)
        latents = torch.randn(1, 4, 8, 8)
        t = torch.tensor([500])
        with network.attached():
            cond = sd1_model.encode_prompts(["a photo"])
            expected = sd1_model.predict(latents, t, cond)
            with tuned_layers([unet, te]) as tuner:
                assert sum("forward" in m.__dict__ for m in unet.modules()) > 10
                got = sd1_model.predict(latents, t, sd1_model.encode_prompts(["a photo"]))
            assert tuner.choice  # shapes were tuned
            with tuned_layers([unet, te]) as again:
                assert again.choice is tuner.choice  # kept for the next run in this process
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert not any("forward" in m.__dict__ for m in list(unet.modules()) + list(te.modules()))


def test_saved_choices_are_reused_so_every_run_takes_the_same_kernels(monkeypatch, tmp_path):
    """train.deterministic: a later run (a new process) uses the first run's choice even where
    its own timing would pick the other kernel."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cpu_tuning, "_PROCESS_CHOICES", {})
    layer = nn.Linear(24, 40).requires_grad_(False)
    x = torch.randn(3, 24)
    monkeypatch.setattr(LayerTuner, "_fastest", lambda self, ways, layer, x, needs_backward: 1)
    with tuned_layers([layer], persist=True) as first:
        layer(x)
    assert list(first.choice.values()) == [1]
    assert list((tmp_path / "lora_studio" / "cpu_tuning").glob("choices-*.json"))

    monkeypatch.setattr(cpu_tuning, "_PROCESS_CHOICES", {})  # a new process
    monkeypatch.setattr(LayerTuner, "_fastest", lambda self, ways, layer, x, needs_backward: 0)
    with tuned_layers([layer], persist=True) as second:
        layer(x)
    assert list(second.choice.values()) == [1]
    monkeypatch.setattr(cpu_tuning, "_PROCESS_CHOICES", {})
    with tuned_layers([layer], persist=False) as without:
        layer(x)
    assert list(without.choice.values()) == [0]  # without the saved choices, the new timing decides
