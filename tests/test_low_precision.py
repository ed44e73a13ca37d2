"""The GPU user's weights on the CPU: fp16 / bf16 base weights (as A1111 holds them on a GPU) and
A1111's fp8 weight storage, with an fp32 LoRA under autocast (CPU autocast runs the CUDA path).

Each run must learn (fixed-noise loss falls), save in the chosen dtype, keep the LoRA in fp32,
and leave the base weights bit for bit as they were.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import small_config
from lib_training.errors import SettingsError
from lib_training.lora.io import load_lora
from lib_training.models.fp8 import FP8_DTYPES, compute_dtype, store_as_fp8
from lib_training.models.tiny import tiny_adapter
from lib_training.train.fp8_layers import fp8_upcast
from lib_training.train.loop import train
from lib_training.train.precision import autocast_works, choose_precision, grad_scaler
from test_training import fixed_diffusion_loss, network_from_file

needs_fp8 = pytest.mark.skipif(not FP8_DTYPES, reason="this PyTorch has no float8 dtypes (PyTorch >= 2.1 has)")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def exact_state(modules) -> dict:
    """Every parameter as raw bytes (torch.equal does not take float8) with its dtype and flag."""
    return {f"{i}.{name}": (p.detach().view(torch.uint8).clone(), p.dtype, p.requires_grad)
            for i, module in enumerate(modules) for name, p in module.named_parameters()}


def assert_exactly(before: dict, modules) -> None:
    after = exact_state(modules)
    assert before.keys() == after.keys()
    for key, (raw, dtype, flag) in before.items():
        assert after[key][1:] == (dtype, flag), key
        assert torch.equal(after[key][0], raw), key
    assert all("forward" not in m.__dict__ for module in modules for m in module.modules())


def low_precision_model(kind: str):
    """A tiny SD1 model as a GPU user's WebUI holds it: fp16, bf16, or A1111's fp8 (Linear/Conv2d of the
    UNet and text encoder in float8_e4m3fn, the rest in bf16)."""
    model = tiny_adapter("sd1", seed=0)
    if kind == "fp8":
        model.to("cpu", torch.bfloat16)
        store_as_fp8([model.unet(), model.text_encoder()])
    else:
        model.to("cpu", DTYPES[kind])
    return model


def fixed_loss(model, dataset, autocast: torch.dtype, network=None) -> float:
    with torch.autocast("cpu", dtype=autocast), fp8_upcast([model.unet(), model.text_encoder()]):
        return fixed_diffusion_loss(model, dataset, network)


@pytest.mark.parametrize("kind, save_dtype", [
    ("fp16", "fp16"), ("bf16", "bf16"), pytest.param("fp8", "fp32", marks=needs_fp8)])
def test_half_and_fp8_weights_train_an_fp32_lora_and_stay_bit_identical(kind, save_dtype, photo_dataset, tmp_path,
                                                                        monkeypatch):
    if not autocast_works("cpu", torch.float16) and kind == "fp16":
        pytest.skip(f"PyTorch {torch.__version__} has no fp16 autocast on the CPU (the run refuses it instead)")
    model = low_precision_model(kind)
    modules = [model.unet(), model.text_encoder()]
    before = exact_state(modules)
    autocast = DTYPES.get(kind, torch.bfloat16)
    loss_before = fixed_loss(model, photo_dataset, autocast)
    scaler_steps = count_scaler_steps(monkeypatch)

    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=40, optimizer__unet_lr=5e-3,
                          network__rank=8, network__alpha=8.0, output__save_dtype=save_dtype)
    result = train(config, model)

    assert_exactly(before, modules)
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    tensors, metadata = load_lora(result.path)
    assert {t.dtype for t in tensors.values()} == {{"fp32": torch.float32, **DTYPES}[save_dtype]}
    assert metadata["ss_mixed_precision"] == {"fp8": "bf16"}.get(kind, kind)
    assert scaler_steps == ([40] if kind == "fp16" else [])  # fp16 autocast: every step through a GradScaler
    if save_dtype == "fp32":  # the LoRA itself trained in fp32: its values are not all bf16-representable
        ups = torch.cat([t.flatten() for k, t in tensors.items() if k.endswith("lora_up.weight")])
        assert (ups.to(torch.bfloat16).float() != ups).any()
    loss_after = fixed_loss(model, photo_dataset, autocast, network_from_file(model, result.path, 8, 8.0))
    print(f"{kind}: fixed-noise loss {loss_before:.4f} -> {loss_after:.4f}")
    assert loss_after < 0.8 * loss_before


def count_scaler_steps(monkeypatch) -> list:
    """A list that holds how many optimizer steps went through a GradScaler (empty: none did)."""
    from lib_training.train import loop

    counts: list = []

    def counting(precision, device):
        scaler = grad_scaler(precision, device)
        if scaler is None:
            return None
        counts.append(0)
        step = scaler.step

        def counted(optimizer, *args, **kwargs):
            counts[0] += 1
            return step(optimizer, *args, **kwargs)

        scaler.step = counted
        return scaler

    monkeypatch.setattr(loop, "grad_scaler", counting)
    return counts


@needs_fp8
@pytest.mark.parametrize("layer", [nn.Linear(24, 16), nn.Conv2d(8, 12, 3, padding=1, stride=2)])
def test_fp8_layer_matches_the_upcast_layer_and_keeps_only_fp8_for_backward(layer):
    torch.manual_seed(0)
    x = torch.randn((3, 24) if isinstance(layer, nn.Linear) else (2, 8, 9, 9), requires_grad=True)
    layer.requires_grad_(False)
    reference = type(layer)(*_shape(layer)).requires_grad_(False)
    store_as_fp8([layer])
    reference.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    saved: list[torch.Tensor] = []
    with fp8_upcast([layer]) as wrapped, torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    assert wrapped == 1 and "forward" not in layer.__dict__
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    x_ref = x.detach().requires_grad_(True)
    expected = reference(x_ref)
    (grad_ref,) = torch.autograd.grad(expected.square().sum(), x_ref)
    assert torch.allclose(out, expected, atol=1e-5) and torch.allclose(grad, grad_ref, atol=1e-4)
    weights_saved = [t for t in saved if t.shape == layer.weight.shape]
    assert [t.dtype for t in weights_saved] == [layer.weight.dtype], "backward keeps an upcast copy"


def _shape(layer):
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding


@pytest.mark.parametrize("setting, weights, device, expected", [
    ("auto", torch.float32, "cpu", None),
    ("auto", torch.float32, "cuda", torch.float16),
    ("auto", torch.float16, "cpu", torch.float16),
    ("auto", torch.bfloat16, "cuda", torch.bfloat16),
    ("auto", "fp8", "cpu", torch.bfloat16),  # as A1111's fp8 inference on the CPU
    ("auto", "fp8", "cuda", torch.float16),
    ("bf16", torch.float32, "cpu", torch.bfloat16),
    ("no", torch.float32, "cuda", None),
    ("no", "fp8", "cpu", None),  # fp8 weights upcast to fp32
])
def test_precision_follows_the_setting_and_the_weights(setting, weights, device, expected):
    if weights == "fp8" and not FP8_DTYPES:
        pytest.skip("this PyTorch has no float8 dtypes")
    if expected == torch.float16 and device == "cpu" and not autocast_works("cpu", torch.float16):
        pytest.skip(f"PyTorch {torch.__version__} has no fp16 autocast on the CPU")
    unet = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    if weights == "fp8":
        store_as_fp8([unet])
    else:
        unet.to(weights)
    precision = choose_precision(setting, torch.device(device), unet)
    assert precision.autocast == expected
    assert precision.fp8 == (weights == "fp8")
    assert precision.weights == compute_dtype(unet) == (torch.float32 if weights == "fp8" else weights)
    assert precision.needs_scaler == (expected == torch.float16)


@pytest.mark.parametrize("weights", [torch.float16, torch.bfloat16])
def test_fp32_setting_on_half_weights_is_refused_with_what_to_do(weights, photo_dataset, tmp_path):
    model = tiny_adapter("sd1", seed=0).to("cpu", weights)
    with pytest.raises(SettingsError, match="--no-half"):
        train(small_config(photo_dataset, tmp_path / "out", train__mixed_precision="no"), model)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.safetensors"))


# ---- the WebUI backend: A1111's ldm model in fp16 / bf16 / fp8 ---------------------------------

@pytest.mark.parametrize("kind", ["fp16", "bf16", pytest.param("fp8", marks=needs_fp8)])
def test_webui_backend_trains_on_half_and_fp8_ldm_models(kind, photo_dataset, tmp_path, tmp_path_factory):
    pytest.importorskip("ldm", reason="the ldm package is installed only in the a1111 test env; "
                                      "run `bash tests/run.sh`")
    if kind == "fp16" and not autocast_works("cpu", torch.float16):
        pytest.skip(f"PyTorch {torch.__version__} has no fp16 autocast on the CPU")
    from test_webui_ldm import adapter_for
    from tiny_ldm import build_tiny_ldm

    sd_model = build_tiny_ldm(tmp_path_factory.mktemp("ldm"), "sd1", seed=0)
    if kind == "fp8":  # what A1111's load_model_weights does with FP8 weight = Enable
        sd_model.to(torch.bfloat16)
        vae, sd_model.first_stage_model = sd_model.first_stage_model, None
        store_as_fp8([sd_model])
        sd_model.first_stage_model = vae
    else:
        sd_model.to(DTYPES[kind])
    modules = [sd_model.model.diffusion_model, sd_model.cond_stage_model]
    before = exact_state(modules)
    adapter = adapter_for(sd_model)
    assert adapter.dtype == DTYPES.get(kind, torch.bfloat16)
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=8, optimizer__unet_lr=5e-3,
                          optimizer__text_encoder_lr=1e-3, train__gradient_checkpointing=True)
    result = train(config, adapter)
    assert_exactly(before, modules)
    tensors, _ = load_lora(result.path)
    ups = {k: v for k, v in tensors.items() if k.endswith("lora_up.weight")}
    assert all(v.abs().sum() > 0 for k, v in ups.items() if k.startswith("lora_unet_")), "UNet LoRA got no gradient"
    assert any(v.abs().sum() > 0 for k, v in ups.items() if k.startswith("lora_te_"))
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
