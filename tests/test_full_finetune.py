"""The full fine-tune (`network.method = "full"`) on a tiny model: it learns, the checkpoint it writes
loads back and reproduces the trained model, the model in memory is bit-identical after finish, cancel
and an error, resume continues the same curve, half-precision weights train through fp32 masters,
and the extracted LoRA approximates the difference better as its rank grows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import small_config
from lib_training.config import TrainConfig
from lib_training.errors import SettingsError, TrainingCancelled, TrainingError
from lib_training.lora.extract import extract_lora, low_rank
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape
from lib_training.models.single_file import load_checkpoint, read_checkpoint
from lib_training.models.tiny import tiny_adapter
from lib_training.train import events as ev
from lib_training.train.full import FullFineTune
from lib_training.train.loop import train
from test_training import _assert_same_state, _model_state, fixed_diffusion_loss


def full_config(dataset, out, **overrides):
    overrides = {"network__method": "full", "optimizer__unet_lr": 2e-4, "optimizer__text_encoder_lr": 0.0,
                 **overrides}
    return small_config(dataset, out, **overrides)


def _probe(model) -> torch.Tensor:
    """The UNet + text encoder on fixed inputs: equal outputs = equal trained weights."""
    torch.manual_seed(0)
    latents, timestep = torch.randn(1, 4, 8, 8), torch.tensor([400])
    with torch.no_grad():
        cond = model.encode_prompts(["sks cat, sitting"])
        return model.predict(latents, timestep, cond)


def test_full_finetune_learns_writes_a_checkpoint_that_reproduces_it_and_restores_the_model(
        photo_dataset, tmp_path):
    model = tiny_adapter("sd1", seed=5)
    model.unet().conv_in.weight.requires_grad_(True)  # A1111 leaves its UNet trainable: that flag comes back
    before_state = _model_state(model)
    base_probe = _probe(model)
    loss_before = fixed_diffusion_loss(model, photo_dataset)
    trained = {}

    def on_event(event):
        if isinstance(event, ev.Finished):  # still inside the run: the model holds the trained weights
            trained["probe"] = _probe(model)
            trained["loss"] = fixed_diffusion_loss(model, photo_dataset)

    config = full_config(photo_dataset, tmp_path / "Stable-diffusion", train__max_steps=40, train__epochs=10,
                         optimizer__text_encoder_lr=1e-4, train__save_every_epochs=5)
    result = train(config, model, on_event=on_event)
    print(f"full fine-tune fixed-noise loss {loss_before:.4f} -> {trained['loss']:.4f}")
    assert trained["loss"] < 0.8 * loss_before
    assert not torch.equal(trained["probe"], base_probe)

    # The model in memory: every weight, flag and mode as before; no hooks left.
    _assert_same_state(model, before_state)
    assert torch.equal(_probe(model), base_probe)
    model.unet().conv_in.weight.requires_grad_(False)

    # The files: <name>.safetensors + <name>-000005.safetensors, ldm layout, metadata.
    names = sorted(p.name for p in result.path.parent.glob("*.safetensors"))
    assert names == ["test_lora-000005.safetensors", "test_lora.safetensors"]
    state, meta = read_checkpoint(result.path)
    assert any(k.startswith("model.diffusion_model.") for k in state)
    assert any(k.startswith("first_stage_model.") for k in state)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in state)
    assert not any("lora" in k for k in state)
    assert meta["lora_studio.method"] == "full" and meta["ss_sd_model_name"] == "tiny-sd1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and "ss_network_dim" not in meta
    assert meta["ss_steps"] == "40" and meta["lora_studio.trained_text_encoder"] == "True"

    # Loaded back (fp32 file), it gives the trained model's outputs.
    reloaded = load_checkpoint(result.path)
    assert torch.allclose(_probe(reloaded), trained["probe"], atol=1e-5, rtol=1e-5)
    epoch5 = load_checkpoint(tmp_path / "Stable-diffusion" / "test_lora-000005.safetensors")
    assert not torch.equal(_probe(epoch5), trained["probe"])


def test_fp16_is_the_default_file_dtype_and_class_images_work(photo_dataset, tmp_path):
    from conftest import write_photos

    assert TrainConfig().output.save_dtype == "fp16"
    reg = write_photos(tmp_path / "reg" / "1_cat", names=("coffee",), captions={"coffee": "a cat"}).parent
    model = tiny_adapter("sd1", seed=5)
    config = full_config(photo_dataset, tmp_path / "out", train__max_steps=2, output__save_dtype="fp16",
                         data__reg_dir=str(reg))
    state, meta = read_checkpoint(train(config, model).path)
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    assert floats == {torch.float16}
    assert meta["ss_num_reg_images"] == "1" and meta["ss_prior_loss_weight"] == "1.0"


def test_model_bit_identical_after_cancel_and_after_an_error(photo_dataset, tmp_path, monkeypatch):
    model = tiny_adapter("sd1", seed=6)
    before = _model_state(model)
    cancel = ev.CancelToken()

    def cancel_at_step_2(event):
        if isinstance(event, ev.StepDone) and event.step == 2:
            cancel.cancel()

    with pytest.raises(TrainingCancelled):
        train(full_config(photo_dataset, tmp_path / "c", optimizer__text_encoder_lr=1e-4), model,
              on_event=cancel_at_step_2, cancel=cancel)
    _assert_same_state(model, before)

    calls, original = {"n": 0}, model.predict

    def failing_predict(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated out of memory")
        return original(*args)

    monkeypatch.setattr(model, "predict", failing_predict)
    with pytest.raises(RuntimeError, match="simulated"):
        train(full_config(photo_dataset, tmp_path / "e", train__gradient_checkpointing=True), model)
    monkeypatch.undo()
    _assert_same_state(model, before)


def test_nan_stops_and_keeps_the_model(photo_dataset, tmp_path, monkeypatch):
    model = tiny_adapter("sd1", seed=6)
    before = _model_state(model)
    original = model.predict
    monkeypatch.setattr(model, "predict", lambda *a: original(*a) * float("nan"))
    with pytest.raises(TrainingError, match="loss became nan"):
        train(full_config(photo_dataset, tmp_path / "n"), model)
    monkeypatch.undo()
    _assert_same_state(model, before)
    assert not list((tmp_path / "n").glob("*.safetensors"))


def test_resume_continues_the_same_loss_curve_and_weights(photo_dataset, tmp_path):
    model = tiny_adapter("sd1", seed=7)
    whole = train(full_config(photo_dataset, tmp_path / "whole", train__max_steps=8, optimizer__optimizer="lion",
                              optimizer__unet_lr=1e-5), model)
    cancel = ev.CancelToken()

    def cancel_at_step_3(event):
        if isinstance(event, ev.StepDone) and event.step == 3:
            cancel.cancel()

    config = full_config(photo_dataset, tmp_path / "split", train__max_steps=8, optimizer__optimizer="lion",
                         optimizer__unet_lr=1e-5)
    with pytest.raises(TrainingCancelled, match="step 3 of 8"):
        train(config, model, on_event=cancel_at_step_3, cancel=cancel)
    resumed = train(config, model, resume=True)
    assert [s for s, _ in resumed.losses] == list(range(1, 9))
    assert [x for _, x in resumed.losses] == pytest.approx([x for _, x in whole.losses], rel=1e-5, abs=1e-6)
    a, b = read_checkpoint(whole.path)[0], read_checkpoint(resumed.path)[0]
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4) for k in a)


class _HalfModel:
    """Just enough of a ModelAdapter for FullFineTune: a half-precision 'UNet' and 'text encoder'."""

    def __init__(self):
        torch.manual_seed(0)
        self._unet = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).half()
        self._te = nn.Linear(4, 4).half()

    def unet(self):
        return self._unet

    def text_encoder(self):
        return self._te


def test_half_precision_weights_train_through_fp32_masters_and_come_back_exactly():
    model = _HalfModel()
    originals = {n: p.detach().clone() for n, p in model.unet().named_parameters()}
    trained = FullFineTune(model, train_text_encoder=False)
    with trained.attached():
        masters = trained.unet_parameters()
        assert all(m.dtype == torch.float32 for m in masters) and len(masters) == 4
        assert trained.text_encoder_parameters() == []
        optimizer = torch.optim.SGD(masters, lr=1e-3)
        trained.follow(optimizer)
        for _ in range(2):  # accumulation: the master gets the sum of both half gradients
            model.unet()(torch.ones(2, 8, dtype=torch.float16)).float().sum().backward()
        assert all(p.grad is None for p in model.unet().parameters())  # moved into the masters
        grads = [m.grad.clone() for m in masters]
        optimizer.step()
        for p, m, g in zip(model.unet().parameters(), masters, grads):
            assert torch.equal(p, m.half())  # the weight follows its master
            assert g.abs().sum() > 0
        assert not torch.equal(model.unet()[0].weight, originals["0.weight"])
    for n, p in model.unet().named_parameters():
        assert torch.equal(p, originals[n]) and p.dtype == torch.float16 and p.grad is None


def test_extracted_lora_error_falls_with_rank_and_loads_as_a_kohya_lora():
    model = tiny_adapter("sd1", seed=8)
    gen = torch.Generator().manual_seed(0)
    original, tuned = {}, {}
    for module in (model.unet(), model.text_encoder()):
        for p in module.parameters():
            original[id(p)] = p.detach().clone()
            tuned[id(p)] = p.detach() + 0.01 * torch.randn(p.shape, generator=gen)

    def extracted(rank: int) -> dict:
        return extract_lora(model, original, lambda w: tuned[id(w)], rank, text_encoder=True,
                            dtype=torch.float32, clamp_quantile=1.0)

    network = LoraNetwork.for_model(model, NetworkShape(rank=4, alpha=4))
    network.load_kohya_state_dict(extracted(4))  # kohya keys, one per target, alpha = rank
    deltas = {m.kohya_name: tuned[id(m.base.weight)] - original[id(m.base.weight)] for m in network}

    def error(rank: int) -> float:
        tensors, total = extracted(rank), 0.0
        for name, delta in deltas.items():
            up, down = tensors[f"{name}.lora_up.weight"], tensors[f"{name}.lora_down.weight"]
            product = up.flatten(1) @ down.flatten(1) * (tensors[f"{name}.alpha"] / up.shape[1])
            total += float((product.reshape(delta.shape) - delta).norm() / delta.norm())
        return total / len(deltas)

    errors = [error(rank) for rank in (1, 4, 16, 64)]
    print(f"extraction relative error by rank 1/4/16/64: {errors}")
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1e-4  # the full rank of these <= 64-wide layers: exact


def test_low_rank_clamps_outliers_like_kohya():
    delta = torch.randn(16, 16)
    delta[0, 0] = 1e3
    up, down = low_rank(delta, 4, clamp_quantile=0.9)
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]).abs(), 1.0)
    unclamped = low_rank(delta, 4, clamp_quantile=1.0)
    assert high < torch.cat([unclamped[0].flatten(), unclamped[1].flatten()]).abs().max()


def test_run_with_extraction_writes_the_lora_beside_the_checkpoint_folder(photo_dataset, tmp_path):
    model = tiny_adapter("sd1", seed=9)
    models_dir = tmp_path / "models"
    config = full_config(photo_dataset, models_dir / "Stable-diffusion", train__max_steps=3,
                         output__extract_lora_rank=4)
    result = train(config, model)
    assert result.extracted_lora == (models_dir / "Lora" / "test_lora.safetensors").resolve()
    tensors, meta = load_lora(result.extracted_lora)
    assert meta["ss_network_dim"] == "4" and "extracted" in meta["ss_training_comment"]
    assert all(k.startswith("lora_unet_") for k in tensors)  # text encoder not trained: UNet only
    # A second run under the same name refuses before training: the LoRA would be replaced.
    (models_dir / "Stable-diffusion" / "test_lora.safetensors").unlink()
    with pytest.raises(SettingsError, match="already exists"):
        train(config, model)


@pytest.mark.parametrize("overrides, message", [
    ({"network__method": "dora"}, "network.method"),
    ({"output__extract_lora_rank": 4}, "network.method"),
    ({"network__method": "full", "output__extract_lora_rank": -1}, "cannot be negative"),
])
def test_bad_full_settings_are_refused(photo_dataset, tmp_path, overrides, message):
    with pytest.raises(SettingsError, match=message):
        small_config(photo_dataset, tmp_path, **overrides).validate()


def test_cli_method_full_writes_a_checkpoint_and_an_extracted_lora(photo_dataset, tmp_path, capsys):
    from lib_training.cli import main
    from lib_training.models.single_file import save_checkpoint
    from lib_training.models.tiny import build_models, tiny_text_config, tiny_unet_config, tiny_vae_config

    configs = {"unet": tiny_unet_config(), "vae": tiny_vae_config(), "text": tiny_text_config()}
    source = save_checkpoint(tmp_path / "base.safetensors", *build_models(configs["unet"], configs["vae"],
                                                                          configs["text"], seed=5), "sd1", configs)
    out = tmp_path / "models" / "Stable-diffusion"
    args = ["train", "--method", "full", "--checkpoint", str(source), "--data", str(photo_dataset),
            "--output-dir", str(out), "--name", "db_cat", "--steps", "3", "--resolution", "64", "--lr", "1e-4",
            "--unet-only", "--extract-lora-rank", "2"]
    assert main(args + ["--print-config"]) == 0
    assert 'method = "full"' in capsys.readouterr().out  # the TOML uses the same word as the flag
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "db_cat.safetensors" in printed and "extracted LoRA" in printed
    reloaded = load_checkpoint(out / "db_cat.safetensors")  # carries the tiny configs of its source
    assert reloaded.info.family == "sd1" and read_checkpoint(out / "db_cat.safetensors")[1]["ss_steps"] == "3"
    assert (tmp_path / "models" / "Lora" / "db_cat.safetensors").is_file()


def _diffusers_version() -> tuple[int, ...]:
    import diffusers

    return tuple(int(p) for p in diffusers.__version__.split(".")[:2])


@pytest.mark.skipif(_diffusers_version() < (0, 28), reason=(
    "from_single_file with a local config folder needs diffusers >= 0.28 (the `current` env): "
    "`.venv-tests/current/bin/python -m pytest tests/test_full_finetune.py`"))
def test_checkpoint_loads_in_diffusers_from_single_file_offline_and_gives_the_trained_output(
        photo_dataset, tmp_path, monkeypatch):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_adapter("sd1", seed=11)
    trained = {}

    def on_event(event):
        if isinstance(event, ev.Finished):
            torch.manual_seed(0)
            trained["latents"], trained["ids"] = torch.randn(1, 4, 8, 8), model.tokenize(["sks cat, sitting"])
            with torch.no_grad():
                cond = model.text_encoder()(trained["ids"])[0]
                trained["out"] = model.unet()(trained["latents"], torch.tensor([400]), encoder_hidden_states=cond).sample

    config = full_config(photo_dataset, tmp_path / "out", train__max_steps=4, optimizer__text_encoder_lr=1e-4)
    path = train(config, model, on_event=on_event).path
    # The configs in code (the tiny model's; sd_configs' for real SD1/SD2) as a diffusers folder, no weights.
    StableDiffusionPipeline(
        vae=model.vae(), text_encoder=model.text_encoder(), tokenizer=model.tokenizer, unet=model.unet(),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(tmp_path / "cfg")
    for weights in (tmp_path / "cfg").rglob("*.safetensors"):
        weights.unlink()
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(tmp_path / "cfg"), local_files_only=True,
                                                    safety_checker=None)
    with torch.no_grad():
        cond = pipe.text_encoder(trained["ids"])[0]
        out = pipe.unet(trained["latents"], torch.tensor([400]), encoder_hidden_states=cond).sample
    assert torch.allclose(out, trained["out"], atol=1e-5, rtol=1e-5)


def test_cli_extracts_a_lora_between_two_checkpoints(photo_dataset, tmp_path, capsys):
    from lib_training.cli import main
    from lib_training.models.ldm_export import save_ldm_checkpoint

    base_model, tuned_model = tiny_adapter("sd1", seed=12), tiny_adapter("sd1", seed=12)
    with torch.no_grad():
        layer = tuned_model.unet().down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
        layer.weight += 0.05 * torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0))
    base = save_ldm_checkpoint(tmp_path / "base.safetensors", base_model, torch.float32, {})
    tuned = save_ldm_checkpoint(tmp_path / "tuned.safetensors", tuned_model, torch.float32, {})
    out = tmp_path / "Lora" / "picked.safetensors"
    assert main(["extract-lora", "--base", str(base), "--tuned", str(tuned), "--rank", "32", "--out", str(out)]) == 0
    tensors, meta = load_lora(out)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {k.rsplit(".", 2)[0] for k in tensors} == {name}  # only the changed layer
    delta = tensors[f"{name}.lora_up.weight"].float() @ tensors[f"{name}.lora_down.weight"].float()
    # fp16 file, clamped at kohya's 99% quantile: close to the change, not exact.
    change = layer.weight - base_model.unet().down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    assert float((delta - change).norm() / change.norm()) < 0.2
    assert meta["ss_network_dim"] == "32" and "tuned.safetensors" in meta["ss_training_comment"]
    assert main(["extract-lora", "--base", str(base), "--tuned", str(base), "--rank", "4",
                 "--out", str(tmp_path / "same.safetensors")]) == 2
    assert "nothing to extract" in capsys.readouterr().err
