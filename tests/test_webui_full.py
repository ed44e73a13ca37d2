"""The full fine-tune on the model A1111 keeps loaded (real ldm classes, no A1111): the loaded model is
bit-identical afterwards, the checkpoint has exactly the loaded model's keys (A1111's wrappers taken out
of the names) and, loaded into a fresh ldm model, reproduces the trained one; the WebUI puts the files in
models/Stable-diffusion (+ the LoRA in models/Lora) and refuses --medvram."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("ldm", reason="the ldm package is installed only in the a1111 test env; run `bash tests/run.sh`")

from conftest import small_config  # noqa: E402
from test_webui_ldm import adapter_for, assert_same_snapshot, snapshot  # noqa: E402
from tiny_ldm import build_tiny_ldm  # noqa: E402

from lib_training.errors import SettingsError  # noqa: E402
from lib_training.models.single_file import read_checkpoint  # noqa: E402
from lib_training.train import events as ev  # noqa: E402
from lib_training.train.loop import train  # noqa: E402
from lib_training.webui.backend import outputs  # noqa: E402
from lib_training.webui.backend.bridge import check_full_supported  # noqa: E402
from lib_training.webui.backend.ldm_adapter import unwrapped_key  # noqa: E402


def _probe(adapter) -> torch.Tensor:
    torch.manual_seed(3)
    latents, t = torch.randn(2, 4, 8, 8), torch.tensor([50, 700])
    with torch.no_grad():
        return adapter.predict(latents, t, adapter.encode_prompts(["sks cat", "a dog"]))


def test_full_finetune_of_the_loaded_ldm_model_writes_its_checkpoint_and_restores_it(
        tmp_path, photo_dataset):
    sd_model = build_tiny_ldm(tmp_path / "ldm", "sd1", seed=0)
    adapter = adapter_for(sd_model)
    before = snapshot(sd_model)
    base = _probe(adapter)
    trained = {}

    def on_event(event):
        if isinstance(event, ev.Finished):
            trained["probe"] = _probe(adapter)

    config = small_config(photo_dataset, tmp_path / "Stable-diffusion", network__method="full", train__max_steps=3,
                          optimizer__unet_lr=1e-4, optimizer__text_encoder_lr=1e-4,
                          train__gradient_checkpointing=True)
    result = train(config, adapter, on_event=on_event)
    assert_same_snapshot(before, snapshot(sd_model))  # weights, requires_grad, modes, hooks, ldm's flags
    assert torch.equal(_probe(adapter), base)
    assert (trained["probe"] - base).abs().max() > 1e-4

    state, meta = read_checkpoint(result.path)
    assert set(state) == set(sd_model.state_dict()) and meta["lora_studio.method"] == "full"
    fresh = build_tiny_ldm(tmp_path / "ldm", "sd1", seed=1)
    fresh.load_state_dict(state, strict=True)  # what A1111's loader does with the file
    assert torch.allclose(_probe(adapter_for(fresh)), trained["probe"], atol=1e-5)


def test_a1111_wrapper_names_are_taken_out():
    assert unwrapped_key("cond_stage_model.wrapped.transformer.text_model.embeddings.token_embedding.wrapped.weight") \
        == "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    assert unwrapped_key("model.diffusion_model.out.2.bias") == "model.diffusion_model.out.2.bias"


def test_full_finetune_is_refused_under_medvram_with_what_to_do(photo_dataset, tmp_path):
    config = small_config(photo_dataset, tmp_path, network__method="full")
    with pytest.raises(SettingsError, match="--medvram"):
        check_full_supported(config, SimpleNamespace(medvram=True))
    check_full_supported(config, SimpleNamespace(medvram=False))
    check_full_supported(small_config(photo_dataset, tmp_path), SimpleNamespace(medvram=True))  # LoRA works


def test_card_says_full_fine_tune(photo_dataset, tmp_path):
    text = outputs.describe_settings(small_config(photo_dataset, tmp_path, network__method="full"), steps=40)
    assert text.startswith("DreamBooth full fine-tune") and "rank" not in text and "40 steps" in text


# ---- the Train tab and the API (pure, no ldm needed beyond this module's import) ---------------

def test_the_form_offers_the_full_fine_tune_and_places_its_files(photo_dataset, tmp_path):
    from lib_training.config import tomllib

    from lib_training.webui.train import actions, form

    values = {**form.default_values(), "data.train_dir": str(photo_dataset), "output.extract_lora_rank": 8}
    full = form.config_from_values(values, form.METHOD_FULL)
    assert full.network.method == "full" and full.output.extract_lora_rank == 8 and full.data.reg_dir == ""
    assert form.method_of(full) == form.METHOD_FULL
    lora = form.config_from_values(values, form.METHOD_LORA)
    assert lora.network.method == "lora" and lora.output.extract_lora_rank == 0  # the field is full-only
    folders = actions.Folders(tmp_path / "Lora", tmp_path / "runs", tmp_path / "Stable-diffusion")
    placed = actions.config_from_form(form.METHOD_FULL, form.values_to_list(values), folders)
    assert placed.output.output_dir == str(tmp_path / "Stable-diffusion")
    assert placed.output.extract_lora_dir == str(tmp_path / "Lora")
    # The export writes the CLI's word; posting that file to the API gives the same method and folders.
    body = tomllib.loads(form.export_toml(placed, checkpoint="/m/base.safetensors"))
    assert body["network"]["method"] == "full"
    request = form.config_from_request(body, tmp_path / "Lora", tmp_path / "runs", tmp_path / "Stable-diffusion")
    assert request.config.network.method == "full"
    assert request.config.output.output_dir == str(tmp_path / "Stable-diffusion")
    by_word = form.config_from_request({"method": "full", "data": {"train_dir": str(photo_dataset)}},
                                       tmp_path / "Lora", tmp_path / "runs", tmp_path / "Stable-diffusion")
    assert by_word.config.network.method == "full"


def test_the_estimate_counts_the_full_fine_tunes_state(photo_dataset, tmp_path):
    from lib_training.webui.train.estimate import DeviceInfo, memory_gb, seconds_per_step

    gpu = DeviceInfo("cuda", "NVIDIA GeForce RTX 3090", 24.0)
    config = small_config(photo_dataset, tmp_path, data__resolution=512, optimizer__text_encoder_lr=0.0)
    lora_gb, _ = memory_gb(config, gpu)
    config.network.method = "full"
    full_gb, basis = memory_gb(config, gpu)
    # 860 M UNet weights x (fp32 master 4 + gradient 4 + AdamW 8) = 12.8 GB more than the LoRA's state.
    assert 12 < full_gb - lora_gb < 14 and "full fine-tune state (16 bytes" in basis
    config.optimizer.optimizer = "lion"
    assert memory_gb(config, gpu)[0] < full_gb
    assert seconds_per_step(config, gpu)[0] > 0


def test_a_finished_full_run_points_at_the_checkpoint_list():
    from lib_training.webui.backend.service import FINISHED, RunStatus
    from lib_training.webui.train.actions import result_html

    status = RunStatus(state=FINISHED, result="/m/Stable-diffusion/db_cat.safetensors", step=10)
    assert "checkpoint list" in result_html(status, full=True) and "Lora list" in result_html(status)
