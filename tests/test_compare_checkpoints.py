"""Compare over the epochs of a full fine-tune: its checkpoints (in models/Stable-diffusion) are the grid's
files, weight 1 = that checkpoint and 0 = the loaded model; A1111's generator switches checkpoints per
cell and loads the user's checkpoint again at the end (against a faked `modules`, no WebUI)."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import safetensors.numpy

from conftest import write_photos
from lib_training.compare.grid import GridSpec, LoraFile, run_files
from lib_training.config import TrainConfig
from lib_training.errors import SettingsError
from lib_training.webui.compare import actions, form
from lib_training.webui.compare.actions import CompareContext
from lib_training.webui.compare.form import CompareRequest
from lib_training.webui.train.actions import Folders
from test_webui_compare import fake_processing  # noqa: F401  (the faked modules.processing)

RUN = "db_cat"
USER_CHECKPOINT = "random-sd15.safetensors [1617035976]"


@pytest.fixture
def full_world(tmp_path):
    lora_dir, runs_dir, ckpt_dir = tmp_path / "Lora", tmp_path / "runs", tmp_path / "Stable-diffusion"
    dataset = write_photos(tmp_path / "data" / "2_sks cat", names=("chelsea",)).parent
    lora_dir.mkdir()
    ckpt_dir.mkdir()
    for stem, value in ((f"{RUN}-000001", 1.0), (RUN, 2.0)):
        safetensors.numpy.save_file({"w": np.full(4, value, np.float32)}, str(ckpt_dir / f"{stem}.safetensors"))
    config = TrainConfig()
    config.network.method = "full"
    config.data.train_dir, config.data.resolution = str(dataset), 64
    config.output.name, config.output.trigger_word, config.output.output_dir = RUN, "sks", str(ckpt_dir)
    (runs_dir / RUN).mkdir(parents=True)
    (runs_dir / RUN / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    folders = Folders(lora_dir, runs_dir, ckpt_dir)
    context = CompareContext(folders=folders, cache_dir=tmp_path / "cache", output_dir=tmp_path / "grids",
                             base_model_hash="f" * 64, base_model_name="random-sd15")
    return SimpleNamespace(folders=folders, context=context, ckpt_dir=ckpt_dir)


def test_checkpoint_cells_have_no_lora_tag_and_weights_are_0_or_1(tmp_path):
    path = tmp_path / "a.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(2, np.float32)}, str(path))
    checkpoint = LoraFile(path, "a", checkpoint=True)
    spec = GridSpec(files=(checkpoint,), weights=(0, 1), prompts=("sks cat",), seeds=(1,), base_model_hash="f")
    spec.validate()
    with pytest.raises(SettingsError, match="use 0 .*and 1"):
        GridSpec(files=(checkpoint,), weights=(0.5,), prompts=("x",), seeds=(1,), base_model_hash="f").validate()
    with pytest.raises(SettingsError, match="not both"):
        GridSpec(files=(checkpoint, LoraFile(path.with_name("b.safetensors"))), weights=(1,), prompts=("x",),
                 seeds=(1,), base_model_hash="f").validate()


def test_a_full_runs_files_are_its_checkpoints_with_weights_0_and_1(full_world):
    defaults = form.run_defaults(RUN, full_world.folders)
    assert defaults.weights == "0, 1" and defaults.files == [f"{RUN} epoch 1", f"{RUN} (final)"]
    files = form.lora_files_of(CompareRequest(run=RUN), full_world.folders)
    assert all(f.checkpoint for f in files) and files == run_files(full_world.ckpt_dir, RUN, checkpoints=True)
    filled = form.with_defaults(CompareRequest(run=RUN), full_world.folders, given={"run"})
    assert filled.weights == "0, 1"
    kept = form.with_defaults(CompareRequest(run=RUN, weights="1"), full_world.folders, given={"run", "weights"})
    assert kept.weights == "1"


def test_the_generator_switches_to_each_checkpoint_and_back_at_the_end(full_world, fake_processing, monkeypatch,
                                                                        tmp_path):
    from lib_training.compare import run_grid
    from lib_training.webui.compare.generator import A1111Generator, WebUIStop

    reloads = []
    sd_models = ModuleType("modules.sd_models")
    sd_models.checkpoints_list = {}

    def list_models():  # A1111 lists the folder: our files get their titles
        for path in sorted(full_world.ckpt_dir.glob("*.safetensors")):
            sd_models.checkpoints_list[path.name] = SimpleNamespace(filename=str(path), title=f"{path.name} [abc]")

    sd_models.list_models, sd_models.reload_model_weights = list_models, lambda: reloads.append(1)
    monkeypatch.setitem(sys.modules, "modules.sd_models", sd_models)
    sys.modules["modules"].sd_models = sd_models

    request = form.with_defaults(CompareRequest(run=RUN, seeds="1", prompts="a photo of sks cat", class_prompt="",
                                                steps=4), full_world.folders, given={"run", "seeds", "prompts",
                                                                                     "class_prompt", "steps"})
    spec = actions.build_spec(request, full_world.context)
    generator = A1111Generator(USER_CHECKPOINT)
    result = run_grid(spec, generator, tmp_path / "cache", cancel=WebUIStop())
    assert result.complete
    pins = [p.kw["override_settings"]["sd_model_checkpoint"] for p in fake_processing.made]
    assert pins == [USER_CHECKPOINT, f"{RUN}-000001.safetensors [abc]", f"{RUN}.safetensors [abc]"]
    assert all(p.kw["prompt"] == "a photo of sks cat" for p in fake_processing.made)  # no <lora:...> tag
    assert reloads == []
    generator.back_to_users_checkpoint()
    generator.back_to_users_checkpoint()
    assert reloads == [1]  # once, and only after checkpoints were switched to
