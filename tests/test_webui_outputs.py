"""What a finished run leaves beside its LoRA for the WebUI's Lora page: `<name>.json` and a preview."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import safetensors.torch
import torch
from PIL import Image

from conftest import small_config, write_photos
from lib_training.webui.backend import outputs

A1111_USER_METADATA_KEYS = {"description", "sd version", "activation text", "preferred weight", "negative text",
                            "notes"}  # what Lora's "Edit metadata" dialog writes (ui_edit_user_metadata.py)


def fake_lora(path: Path, base_model_version: str = "sd_v1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"lora_unet_x.alpha": torch.tensor(4.0)}, str(path),
                                metadata={"ss_base_model_version": base_model_version, "ss_output_name": path.stem})
    return path


@pytest.fixture
def config(photo_dataset, tmp_path):
    config = small_config(photo_dataset, tmp_path / "Lora")
    config.output.name = "cat_v1"
    config.output.trigger_word = " sks "
    config.network.rank, config.network.alpha = 16, 8.0
    return config


def test_user_metadata_has_a1111s_keys_and_our_values(config, tmp_path):
    lora = fake_lora(tmp_path / "Lora" / "cat_v1.safetensors")
    path = outputs.write_user_metadata(lora, config, preferred_weight=0.7, steps=120)
    assert path == tmp_path / "Lora" / "cat_v1.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) <= A1111_USER_METADATA_KEYS
    assert data["activation text"] == "sks" and data["preferred weight"] == 0.7 and data["sd version"] == "SD1"
    assert "rank 16/alpha 8" in data["description"] and "120 steps" in data["description"]
    assert "epoch" not in data["description"]


def test_defaults_and_sd2_and_unknown_versions(config, tmp_path):
    sd2 = fake_lora(tmp_path / "Lora" / "cat_v1.safetensors", "sd_v2_v")
    data = json.loads(outputs.write_user_metadata(sd2, config).read_text(encoding="utf-8"))
    assert data["sd version"] == "SD2" and data["preferred weight"] == outputs.DEFAULT_PREFERRED_WEIGHT == 0.8
    not_safetensors = tmp_path / "Lora" / "odd.safetensors"
    not_safetensors.write_bytes(b"\x00" * 4)
    assert outputs.sd_version_of(not_safetensors) == ""
    assert "sd version" not in outputs.user_metadata(config, not_safetensors)


def test_the_users_own_keys_are_kept_and_a_damaged_json_replaced(config, tmp_path):
    lora = fake_lora(tmp_path / "Lora" / "cat_v1.safetensors")
    lora.with_suffix(".json").write_text(json.dumps({"notes": "my notes", "negative text": "blurry",
                                                     "activation text": "old"}), encoding="utf-8")
    data = json.loads(outputs.write_user_metadata(lora, config).read_text(encoding="utf-8"))
    assert data["notes"] == "my notes" and data["negative text"] == "blurry" and data["activation text"] == "sks"
    lora.with_suffix(".json").write_text("{not json", encoding="utf-8")
    assert json.loads(outputs.write_user_metadata(lora, config).read_text(encoding="utf-8"))["activation text"] == "sks"
    assert not [p for p in lora.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp files left


def test_preview_is_a_png_whatever_the_source(config, tmp_path):
    lora = fake_lora(tmp_path / "Lora" / "cat_v1.safetensors")
    jpeg = tmp_path / "sample.jpg"
    Image.new("L", (40, 30), 128).save(jpeg)
    path = outputs.write_preview(lora, jpeg)
    assert path.name == "cat_v1.preview.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (40, 30) and image.mode == "RGB"
    outputs.write_preview(lora, Image.new("RGBA", (8, 8)))
    with Image.open(path) as image:
        assert image.size == (8, 8)


def test_publish_writes_for_every_file_of_the_run_and_refreshes_the_list(config, tmp_path, monkeypatch):
    lora_dir = tmp_path / "Lora"
    final = fake_lora(lora_dir / "cat_v1.safetensors")
    epoch = fake_lora(lora_dir / "cat_v1-000002.safetensors")
    sample = write_photos(tmp_path / "samples", names=("coffee",)) / "coffee.png"
    refreshed = []
    networks = ModuleType("networks")
    networks.list_available_networks = lambda: refreshed.append(True)
    monkeypatch.setitem(sys.modules, "networks", networks)

    written = outputs.publish_run_outputs([epoch, final, final, lora_dir / "missing.safetensors"], config,
                                          steps=40, preview_image=sample)
    assert sorted(p.name for p in written) == ["cat_v1-000002.json", "cat_v1.json", "cat_v1.preview.png"]
    assert "This file: epoch 2." in json.loads((lora_dir / "cat_v1-000002.json").read_text())["description"]
    assert refreshed == [True]


def test_a_cancelled_run_without_files_writes_nothing(config, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "networks", raising=False)
    assert outputs.publish_run_outputs([tmp_path / "nope.safetensors"], config) == []
    assert outputs.refresh_lora_list() is False


def test_epoch_numbers_come_from_kohyas_file_names():
    assert outputs.epoch_of(Path("x/cat_v1-000004.safetensors"), "cat_v1") == 4
    assert outputs.epoch_of(Path("x/cat_v1.safetensors"), "cat_v1") is None
    assert outputs.epoch_of(Path("x/cat_v1-final.safetensors"), "cat_v1") is None
    assert outputs.epoch_of(Path("x/other-000004.safetensors"), "cat_v1") is None
