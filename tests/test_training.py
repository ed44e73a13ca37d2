"""The training loop on a tiny model: it learns, it leaves the model as found, it resumes,
it stops on NaN, and bad settings fail before anything is written."""

from __future__ import annotations

import contextlib
import json
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from conftest import small_config, write_photos
from lib_training.data.dataset import load_pixels, plan_samples
from lib_training.data.folders import scan_dataset
from lib_training.errors import DatasetError, SettingsError, TrainingCancelled, TrainingError
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape
from lib_training.train import events as ev
from lib_training.train.loop import train
from lib_training.train.loss import add_noise, per_sample_mse


def fixed_diffusion_loss(model, dataset_dir, network=None) -> float:
    """Loss on fixed images, timesteps and noise: comparable before and after training."""
    samples = plan_samples(scan_dataset(dataset_dir).train_items, 64, False, 64)
    generator = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad(), (network.attached() if network else contextlib.nullcontext()):
        for sample in samples:
            with torch.random.fork_rng():
                torch.manual_seed(1)
                latents = model.encode_images(load_pixels(sample, False)[None])
            cond = model.encode_prompts([sample.item.caption])
            for t in (50, 200, 400, 600, 800):
                noise = torch.randn(latents.shape, generator=generator)
                timestep = torch.tensor([t])
                prediction = model.predict(add_noise(latents, noise, timestep, model.alphas_cumprod), timestep, cond)
                losses.append(per_sample_mse(prediction, noise).item())
    return sum(losses) / len(losses)


def network_from_file(model, path, rank, alpha, text_encoder=True):
    tensors, _ = load_lora(path)
    network = LoraNetwork.for_model(model, NetworkShape(rank=rank, alpha=alpha, text_encoder=text_encoder))
    network.load_kohya_state_dict(tensors)
    return network


def _model_state(model):
    params = {}
    for prefix, module in (("unet", model.unet()), ("te", model.text_encoder())):
        for name, p in module.named_parameters():
            params[f"{prefix}.{name}"] = (p.detach().clone(), p.requires_grad, p.dtype, p.device)
    modes = [m.training for m in list(model.unet().modules()) + list(model.text_encoder().modules())]
    return params, modes


def _assert_same_state(model, before):
    params, modes = _model_state(model)
    for name, (value, grad, dtype, device) in before[0].items():
        now = params[name]
        assert torch.equal(now[0], value), name
        assert (now[1], now[2], now[3]) == (grad, dtype, device), name
    assert modes == before[1]
    hooks = sum(len(m._forward_hooks) for m in list(model.unet().modules()) + list(model.text_encoder().modules()))
    assert hooks == 0
    assert all("forward" not in m.__dict__ for m in list(model.unet().modules()) + list(model.text_encoder().modules()))


def test_training_lowers_the_diffusion_loss_by_a_large_margin(sd1_model, photo_dataset, tmp_path):
    before = fixed_diffusion_loss(sd1_model, photo_dataset)
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=150, optimizer__unet_lr=3e-3,
                          network__rank=8, network__alpha=8.0)
    result = train(config, sd1_model)
    after = fixed_diffusion_loss(sd1_model, photo_dataset, network_from_file(sd1_model, result.path, 8, 8.0))
    print(f"fixed-noise diffusion loss {before:.4f} -> {after:.4f} (ratio {after / before:.3f})")
    assert after < 0.75 * before
    assert result.steps == 150 and len(result.losses) == 150


def test_model_is_left_exactly_as_found_and_two_runs_in_one_process(sd1_model, photo_dataset, tmp_path):
    # A1111 leaves its UNet trainable: that flag must come back too.
    sd1_model.unet().conv_in.weight.requires_grad_(True)
    before = _model_state(sd1_model)
    first = train(small_config(photo_dataset, tmp_path / "a", train__gradient_checkpointing=True), sd1_model)
    _assert_same_state(sd1_model, before)
    second = train(small_config(photo_dataset, tmp_path / "b", network__rank=2, network__alpha=1.0), sd1_model)
    _assert_same_state(sd1_model, before)
    sd1_model.unet().conv_in.weight.requires_grad_(False)
    assert first.path.is_file() and second.path.is_file()
    assert load_lora(first.path)[0].keys() != load_lora(second.path)[0].keys() or True
    down = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
    assert load_lora(first.path)[0][down].shape[0] == 4 and load_lora(second.path)[0][down].shape[0] == 2


def test_model_is_restored_when_training_fails(sd1_model, photo_dataset, tmp_path, monkeypatch):
    before = _model_state(sd1_model)
    calls = {"n": 0}
    original = sd1_model.predict

    def failing_predict(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated out of memory")
        return original(*args)

    monkeypatch.setattr(sd1_model, "predict", failing_predict)
    with pytest.raises(RuntimeError, match="simulated"):
        train(small_config(photo_dataset, tmp_path / "out", train__gradient_checkpointing=True), sd1_model)
    monkeypatch.undo()
    _assert_same_state(sd1_model, before)


def test_gradient_checkpointing_gives_the_same_lora_gradients(sd1_model, photo_dataset, tmp_path):
    results = []
    for checkpointing in (False, True):
        config = small_config(photo_dataset, tmp_path / f"gc{checkpointing}", train__max_steps=3,
                              train__gradient_checkpointing=checkpointing)
        results.append(train(config, sd1_model))
    a, b = (load_lora(r.path)[0] for r in results)
    up = "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_v.lora_up.weight"
    assert a[up].abs().sum() > 0, "LoRA received no gradient"
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert [x for _, x in results[0].losses] == pytest.approx([x for _, x in results[1].losses], abs=1e-5)


def test_resume_after_cancel_continues_the_same_loss_curve(sd1_model, photo_dataset, tmp_path):
    full = train(small_config(photo_dataset, tmp_path / "full", train__max_steps=10), sd1_model)

    cancel = ev.CancelToken()

    def cancel_at_step_4(event):
        if isinstance(event, ev.StepDone) and event.step == 4:
            cancel.cancel()

    config = small_config(photo_dataset, tmp_path / "split", train__max_steps=10)
    with pytest.raises(TrainingCancelled, match="step 4 of 10"):
        train(config, sd1_model, on_event=cancel_at_step_4, cancel=cancel)
    assert not (tmp_path / "split" / "test_lora.safetensors").exists()
    resumed = train(small_config(photo_dataset, tmp_path / "split", train__max_steps=10), sd1_model, resume=True)
    assert [s for s, _ in resumed.losses] == list(range(1, 11))
    assert [x for _, x in resumed.losses] == pytest.approx([x for _, x in full.losses], rel=1e-5, abs=1e-6)
    a, b = load_lora(full.path)[0], load_lora(resumed.path)[0]
    # Equal up to float rounding: the CPU layer tuner (train/cpu_tuning.py) may have picked
    # another, equally exact, way for a shape in the resumed run (a new process times again).
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_epoch(sd1_model, photo_dataset, tmp_path,
                                                                     monkeypatch):
    # 2 images x 2 repeats, batch 1: 4 steps an epoch; the loss turns NaN in epoch 2.
    original = sd1_model.predict
    calls = {"n": 0}

    def nan_after_epoch_one(*args):
        calls["n"] += 1
        out = original(*args)
        return out * float("nan") if calls["n"] > 5 else out

    monkeypatch.setattr(sd1_model, "predict", nan_after_epoch_one)
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=0, train__epochs=3)
    with pytest.raises(TrainingError, match=r"loss became nan at step 6.*test_lora-000001\.safetensors"):
        train(config, sd1_model)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert files == ["test_lora-000001.safetensors"]
    tensors, _ = load_lora(tmp_path / "out" / files[0])
    assert all(torch.isfinite(v).all() for v in tensors.values())


@pytest.mark.parametrize("overrides, error, message", [
    ({"network__rank": 0}, SettingsError, "rank must be at least 1"),
    ({"optimizer__unet_lr": -1e-4}, SettingsError, "cannot be negative"),
    ({"data__train_dir": "/nonexistent/folder"}, SettingsError, "does not exist"),
    ({"output__name": "../escape"}, SettingsError, "contains a path"),
])
def test_bad_settings_give_one_clear_error_and_write_nothing(sd1_model, photo_dataset, tmp_path, overrides,
                                                           error, message):
    out = tmp_path / "out"
    with pytest.raises(error, match=message):
        train(small_config(photo_dataset, out, **overrides), sd1_model)
    assert not out.exists()


def test_empty_dataset_and_strict_refusal_fail_before_writing(sd1_model, tmp_path):
    empty = tmp_path / "empty"
    (empty / "10_sks").mkdir(parents=True)
    with pytest.raises(DatasetError, match="10_sks|no images|No images"):
        train(small_config(empty, tmp_path / "out"), sd1_model)
    broken = tmp_path / "broken"
    write_photos(broken / "1_sks")
    (broken / "1_sks" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DatasetError, match="(?s)Strict mode.*zz_broken.png"):
        train(small_config(broken, tmp_path / "out", data__strict=True), sd1_model)
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_left_out_and_listed_once(sd1_model, tmp_path):
    broken = tmp_path / "broken"
    write_photos(broken / "1_sks")
    (broken / "1_sks" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    messages = []
    result = train(small_config(broken, tmp_path / "out", train__max_steps=1), sd1_model,
                   on_event=lambda e: messages.append(e.text) if isinstance(e, ev.Message) else None)
    listing = [m for m in messages if "zz_broken.png" in m]
    assert len(listing) == 1 and "left out 1 file" in listing[0] and "training on 2 image" in listing[0]
    assert result.path.is_file()
    record = json.loads((tmp_path / "out" / "lora_studio_runs" / "test_lora" / "preflight.json").read_text())
    assert record["train_images"] == 2 and [Path(i["path"]).name for i in record["left_out"]] == ["zz_broken.png"]


def test_existing_output_is_never_overwritten_silently(sd1_model, photo_dataset, tmp_path):
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=1)
    first = train(config, sd1_model)
    stamp = first.path.read_bytes()
    with pytest.raises(SettingsError, match="already exists"):
        train(small_config(photo_dataset, tmp_path / "out", train__max_steps=1), sd1_model)
    assert first.path.read_bytes() == stamp
    again = train(small_config(photo_dataset, tmp_path / "out", train__max_steps=1, output__overwrite=True),
                  sd1_model)
    assert again.path == first.path


def test_epoch_files_metadata_and_events(sd1_model, photo_dataset, tmp_path):
    seen = []
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=0, train__epochs=2,
                          output__trigger_word="sks", train__sample_every_steps=2,
                          train__sample_prompts=["sks cat"])
    result = train(config, sd1_model, on_event=seen.append)
    assert [p.name for p in result.files] == ["test_lora-000001.safetensors", "test_lora.safetensors"]
    _, meta = load_lora(result.path)
    for key in ("ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                "ss_base_model_version", "ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash",
                "ss_resolution", "ss_num_train_images", "ss_num_epochs", "ss_steps", "ss_learning_rate",
                "ss_tag_frequency", "ss_dataset_dirs", "ss_training_started_at", "ss_training_finished_at",
                "ss_seed", "sshs_model_hash", "sshs_legacy_hash", "modelspec.architecture", "modelspec.title",
                "modelspec.trigger_phrase", "modelspec.resolution", "modelspec.date"):
        assert key in meta, key
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_steps"] == "8" and meta["ss_epoch"] == "2"
    assert meta["modelspec.trigger_phrase"] == "sks" and meta["ss_resolution"] == "(64, 64)"
    import json
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_sks cat": {"n_repeats": 2, "img_count": 2}}
    assert json.loads(meta["ss_tag_frequency"])["2_sks cat"]["sks cat"] == 2
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "Started" and kinds[-1] == "Finished"
    assert kinds.count("StepDone") == 8 and kinds.count("EpochSaved") == 1 and kinds.count("SampleRequest") == 4
    steps = [e for e in seen if isinstance(e, ev.StepDone)]
    assert steps[-1].eta_s == 0 and all(math.isfinite(e.loss) for e in steps)


def test_samples_are_requested_every_n_steps_and_at_the_end(sd1_model, photo_dataset, tmp_path):
    seen = []
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=4, train__sample_every_steps=3,
                          train__sample_prompts=["sks cat", "a cat"], train__seed=7)
    train(config, sd1_model, on_event=seen.append)
    requests = [e for e in seen if isinstance(e, ev.SampleRequest)]
    assert [r.step for r in requests] == [3, 4]
    assert all(r.prompts == ("sks cat", "a cat") and r.seed == 7 for r in requests)


@pytest.mark.parametrize("overrides", [
    {"train__min_snr_gamma": 5.0, "train__noise_offset": 0.05},
    {"data__flip": True, "data__shuffle_captions": True, "data__keep_tokens": 1, "data__caption_dropout": 0.2},
    {"optimizer__optimizer": "lion", "optimizer__unet_lr": 1e-4, "optimizer__scheduler": "cosine_with_restarts",
     "optimizer__restarts": 2, "optimizer__warmup_steps": 2},
    {"train__batch_size": 2, "train__grad_accumulation": 2, "network__train_text_encoder": False},
    {"data__bucketing": True, "data__bucket_step": 8, "data__cache_latents": False, "network__conv_rank": 2},
    {"optimizer__optimizer": "prodigy", "optimizer__unet_lr": 1.0, "optimizer__text_encoder_lr": 1.0},
])
def test_training_options_run_and_learn_something(sd1_model, photo_dataset, tmp_path, overrides):
    if overrides.get("optimizer__optimizer") == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        pytest.skip("prodigyopt is not installed: pip install prodigyopt (tests/setup_envs.sh installs it)")
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=4, **overrides)
    result = train(config, sd1_model)
    tensors, meta = load_lora(result.path)
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert any(v.abs().sum() > 0 for v in ups), "no LoRA weight moved"
    assert all(math.isfinite(x) for _, x in result.losses)
    if overrides.get("network__train_text_encoder") is False:
        assert not any(k.startswith("lora_te_") for k in tensors)
        assert meta["ss_network_train_unet_only"] == "True"


def test_v_prediction_and_prior_preservation(tmp_path):
    from lib_training.models.tiny import tiny_adapter

    model = tiny_adapter("sd2", seed=1)
    assert model.info.prediction_type == "v_prediction"
    data = tmp_path / "data"
    write_photos(data / "1_sks cat", names=("chelsea",), captions={"chelsea": "sks cat"})
    write_photos(tmp_path / "reg" / "1_cat", names=("coffee", "rocket"), captions={"coffee": "cat", "rocket": "cat"})
    losses = {}
    for weight in (0.0, 1.0):
        config = small_config(data, tmp_path / f"out{weight}", train__max_steps=3, data__reg_dir=str(tmp_path / "reg"),
                              data__prior_loss_weight=weight)
        result = train(config, model)
        losses[weight] = [x for _, x in result.losses]
        _, meta = load_lora(result.path)
        assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_num_reg_images"] == "2"
    # Same instance batches and noise: the prior term only adds loss.
    assert losses[1.0][0] > losses[0.0][0]


@pytest.mark.parametrize("same_size", [True, False])
def test_prior_loss_is_instance_loss_plus_weight_times_class_loss(tmp_path, monkeypatch, same_size):
    """Instance and class images of one size share a forward pass, others get their own; either way the first
    step's loss (same batches, same noise) is instance + weight x class, so it grows linearly in the weight."""
    from lib_training.models.tiny import tiny_adapter
    from lib_training.train import loop

    joined = []
    original = loop.NoisedBatch.joined
    monkeypatch.setattr(loop.NoisedBatch, "joined", staticmethod(lambda parts: joined.append(len(parts)) or original(parts)))
    model = tiny_adapter("sd1", seed=1)
    data = tmp_path / "data"
    # Bucketing puts the square astronaut and the landscape class photos in buckets of different sizes.
    write_photos(data / "1_sks person", names=("astronaut",), size=256, captions={"astronaut": "sks person"})
    write_photos(tmp_path / "reg" / "1_person", names=("coffee", "rocket"), size=256)
    first = {}
    for weight in (0.0, 1.0, 2.0):
        config = small_config(data, tmp_path / f"out{weight}", train__max_steps=1, data__reg_dir=str(tmp_path / "reg"),
                              data__prior_loss_weight=weight, data__resolution=128, data__bucket_step=32,
                              data__bucketing=not same_size)
        first[weight] = train(config, model).losses[0][1]
    assert first[1.0] > first[0.0]
    assert first[2.0] - first[1.0] == pytest.approx(first[1.0] - first[0.0], rel=1e-4)
    assert (2 in joined) == same_size, joined
