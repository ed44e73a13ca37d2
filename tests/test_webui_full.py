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
