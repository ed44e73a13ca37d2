"""The Train form without gradio: fields <-> TrainConfig, presets, names, dataset summary, estimate, runs."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from conftest import small_config, write_photos
from lib_training.config import TrainConfig
from lib_training.errors import DatasetError, SettingsError
from lib_training.train.plan import make_plan
from lib_training.webui.train import form, actions as train_actions
from lib_training.webui.train.dataset_summary import list_dataset_folders, summarize_dataset
from lib_training.webui.train.estimate import DeviceInfo, estimate, memory_gb, seconds_per_step
from lib_training.webui.train.presets import PRESETS, TARGET_SAMPLES_PER_EPOCH, describe, find_preset, suggested_repeats
from lib_training.webui.train.runs import list_runs, read_run, runs_table_html
from lib_training.webui.backend.service import CANCELLED, FAILED, FINISHED, RunStatus

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

GPU_24GB = DeviceInfo("cuda", "NVIDIA GeForce RTX 3090", 24.0)


def all_config_keys() -> set[str]:
    config = TrainConfig()
    return {f"{s.name}.{f.name}" for s in dataclasses.fields(config)
            for f in dataclasses.fields(getattr(config, s.name))}


def changed_config(train_dir: Path) -> TrainConfig:
    config = TrainConfig()
    config.data.train_dir = str(train_dir)
    config.network.rank, config.network.alpha = 8, 4.0
    config.optimizer.scheduler = "cosine_with_restarts"
    config.train.sample_prompts = ["a photo of sks cat", "sks cat on a beach"]
    config.train.gradient_checkpointing = True
    config.output.name = "cat_v2"
    config.output.trigger_word = "sks"
    return config


# ---- fields ------------------------------------------------------------------------------------

def test_every_setting_is_either_a_form_field_or_set_by_the_webui():
    keys = all_config_keys()
    assert set(form.FIELD_KEYS) | set(form.WEBUI_MANAGED) == keys
    assert not set(form.FIELD_KEYS) & set(form.WEBUI_MANAGED)
    assert len(form.FIELD_KEYS) == len(set(form.FIELD_KEYS))


def test_choices_of_choice_fields_are_what_validate_accepts(photo_dataset):
    for f in form.FIELDS:
        if f.kind != "choice":
            continue
        for choice in f.choices:
            values = form.default_values()
            values.update({f.key: choice, "data.train_dir": str(photo_dataset)})
            form.config_from_values(values).validate()


def test_form_values_round_trip_through_the_config(photo_dataset):
    config = changed_config(photo_dataset)
    values = form.values_from_config(config)
    assert values["train.sample_prompts"] == "a photo of sks cat\nsks cat on a beach"
    back = form.config_from_values(values, form.METHOD_LORA)
    assert back.to_dict() == config.to_dict()
    # and through the list order the tab's inputs use
    assert form.values_from_list(form.values_to_list(values)) == values


def test_gradio_style_values_are_coerced_and_empty_ones_named(photo_dataset):
    values = form.default_values()
    values.update({"data.train_dir": f"  {photo_dataset}  ", "network.rank": 16.0, "train.epochs": "12",
                   "optimizer.unet_lr": "3e-4"})
    config = form.config_from_values(values)
    assert config.network.rank == 16 and isinstance(config.network.rank, int)
    assert config.train.epochs == 12 and config.optimizer.unet_lr == pytest.approx(3e-4)
    assert config.data.train_dir == str(photo_dataset)
    with pytest.raises(SettingsError, match=r"Rank \(dim\) \(network.rank\) is empty"):
        form.config_from_values({**values, "network.rank": None})
    with pytest.raises(SettingsError, match="must be a number"):
        form.config_from_values({**values, "train.epochs": "ten"})
    with pytest.raises(SettingsError, match="cannot be set here"):
        form.config_from_values({**values, "output.output_dir": "/tmp"})


def test_method_decides_whether_class_images_are_used(photo_dataset, tmp_path):
    reg = write_photos(tmp_path / "reg" / "1_cat", names=("chelsea",)).parent
    values = {**form.default_values(), "data.train_dir": str(photo_dataset), "data.reg_dir": str(reg)}
    assert form.config_from_values(values, form.METHOD_LORA).data.reg_dir == ""
    assert form.config_from_values(values, form.METHOD_DREAMBOOTH).data.reg_dir == str(reg)
    with pytest.raises(SettingsError, match="class-image folder"):
        form.config_from_values({**values, "data.reg_dir": ""}, form.METHOD_DREAMBOOTH)
    with pytest.raises(SettingsError, match="Method"):
        form.config_from_values(values, "Textual inversion")


# ---- presets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("key", list(PRESETS))
def test_presets_follow_community_practice(key, photo_dataset):
    preset = PRESETS[key]
    v = preset.values
    assert v["network.alpha"] == v["network.rank"] / 2 and 16 <= v["network.rank"] <= 32
    assert v["optimizer.unet_lr"] == 5e-4
    assert v["optimizer.scheduler"] in ("cosine_with_restarts", "constant")
    assert v["train.min_snr_gamma"] == 5 and v["train.batch_size"] == 2 and v["data.resolution"] == 512
    assert v["data.keep_tokens"] == 1 and v["data.shuffle_captions"]
    assert v["train.save_every_epochs"] == 1 and v["train.epochs"] == 10
    values = form.apply_preset({**form.default_values(), "data.train_dir": str(photo_dataset)}, preset)
    form.config_from_values(values).validate()  # every preset is a valid config
    assert "steps" in describe(preset) and "GB" in describe(preset) and "\n" not in describe(preset)


def test_style_preset_trains_the_text_encoder_little_or_not_and_flips_while_faces_do_not():
    style, person = PRESETS["style"].values, PRESETS["person"].values
    assert not style["network.train_text_encoder"] or style["optimizer.text_encoder_lr"] <= 5e-5
    assert style["data.flip"] and not person["data.flip"]
    assert person["optimizer.text_encoder_lr"] == 1e-4


def test_a_preset_keeps_dataset_name_and_trigger_word():
    values = {**form.default_values(), "data.train_dir": "/data/x", "output.name": "mine",
              "output.trigger_word": "zzk", "network.rank": 128}
    applied = form.apply_preset(values, find_preset("Object"))
    assert (applied["data.train_dir"], applied["output.name"], applied["output.trigger_word"]) == \
        ("/data/x", "mine", "zzk")
    assert applied["network.rank"] == PRESETS["object"].values["network.rank"]
    with pytest.raises(KeyError, match="person"):
        find_preset("portrait")


def test_suggested_repeats_land_in_the_target_range():
    low, high = TARGET_SAMPLES_PER_EPOCH
    for images in (1, 7, 16, 34, 150, 500):
        repeats = suggested_repeats(images)
        assert repeats >= 1
        assert low <= images * repeats <= high or repeats == 1


# ---- output names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("../escape", "path"), ("a/b", "path"), ("a\\b", "path"), ("CON", "reserved"), ("", "empty"),
    ("x:y", "':'"),
])
def test_bad_output_names_are_refused_with_the_reason(name, message, tmp_path):
    check = form.check_output_name(name, tmp_path, overwrite=True)
    assert not check.ok and message in check.message


def test_an_existing_lora_needs_overwrite(tmp_path):
    (tmp_path / "taken.safetensors").write_bytes(b"x")
    refused = form.check_output_name("taken", tmp_path, overwrite=False)
    assert not refused.ok and refused.exists and "Overwrite" in refused.message
    allowed = form.check_output_name("taken.safetensors", tmp_path, overwrite=True)
    assert allowed.ok and allowed.exists and allowed.name == "taken"
    fresh = form.check_output_name("new one", tmp_path, overwrite=False)
    assert fresh.ok and not fresh.exists and str(tmp_path) in fresh.message


def test_check_before_start_refuses_what_would_fail_later(photo_dataset, tmp_path):
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    config = form.place_in_webui(small_config(photo_dataset, lora_dir), lora_dir, tmp_path / "runs")
    form.check_before_start(config)
    (lora_dir / "test_lora.safetensors").write_bytes(b"x")
    with pytest.raises(SettingsError, match="already exists"):
        form.check_before_start(config)
    form.check_before_start(config, resume=True)  # resuming writes the same file on purpose
    empty = tmp_path / "empty"
    empty.mkdir()
    config.data.train_dir = str(empty)
    with pytest.raises(DatasetError, match="No images"):
        form.check_before_start(config, resume=True)


# ---- API request bodies ------------------------------------------------------------------------

def test_request_accepts_toml_sections_form_keys_and_a_preset(photo_dataset, tmp_path):
    body = {"preset": "style", "data": {"train_dir": str(photo_dataset)}, "network.rank": 8,
            "output": {"name": "api_run", "trigger_word": "sks"}, "resume": True}
    request = form.config_from_request(body, tmp_path / "Lora", tmp_path / "runs")
    c = request.config
    assert request.resume is True
    assert c.network.rank == 8 and c.network.conv_rank == PRESETS["style"].values["network.conv_rank"]
    assert c.output.output_dir == str(tmp_path / "Lora") and c.output.runs_dir == str(tmp_path / "runs")
    assert c.data.reg_dir == "" and c.output.name == "api_run"


def test_a_cli_toml_can_be_posted_as_is_and_webui_folders_win(photo_dataset, tmp_path):
    exported = small_config(photo_dataset, tmp_path / "elsewhere")
    exported.model.checkpoint = "/models/x.safetensors"
    body = tomllib.loads(form.export_toml(exported))
    request = form.config_from_request(body, tmp_path / "Lora", tmp_path / "runs")
    assert request.config.output.output_dir == str(tmp_path / "Lora")
    assert request.config.model.checkpoint == ""
    assert any("output.output_dir" in note for note in request.ignored)
    assert request.config.network.rank == exported.network.rank


@pytest.mark.parametrize("body, message", [
    ({"networks": {"rank": 4}}, "Unknown field"),
    ({"network": {"rnak": 4}}, "Unknown setting"),
    ({"network": 4}, "must be an object"),
    ({"preset": "portrait"}, "No preset"),
    ({"resume": "yes"}, "resume must be true or false"),
    ({"method": "dreambooth"}, "class-image folder"),
])
def test_bad_requests_say_what_is_wrong(body, message, tmp_path):
    with pytest.raises(SettingsError, match=message):
        form.config_from_request(body, tmp_path, tmp_path)


def test_exported_toml_is_the_clis_config(photo_dataset, tmp_path):
    config = changed_config(photo_dataset)
    text = form.export_toml(config, checkpoint="/m/model.safetensors")
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    loaded = TrainConfig.from_toml(path)
    assert loaded.model.checkpoint == "/m/model.safetensors"
    loaded.model.checkpoint = ""
    assert loaded.to_dict() == config.to_dict()


def test_lora_prompt_is_what_an_extra_networks_card_inserts():
    assert form.lora_prompt("cat_v2", 0.8, "sks") == "<lora:cat_v2:0.8> sks"
    assert form.lora_prompt("cat_v2", 1.0) == "<lora:cat_v2:1>"
    with pytest.raises(SettingsError):
        form.lora_prompt("../x", 1.0)


# ---- dataset summary ---------------------------------------------------------------------------

def test_dataset_summary_counts_and_finds_the_trigger_word(photo_dataset, tmp_path):
    summary = summarize_dataset(str(photo_dataset))
    assert (summary.images, summary.captioned, summary.samples_per_epoch) == (2, 2, 4)
    assert summary.trigger_words == ["sks"] and summary.class_words == ["cat"]
    assert "2 images" in summary.line and "2 repeats" in summary.line and "trigger: sks" in summary.line
    assert "repeats (folder name" in summary.line  # 4 per epoch is far below the presets' range
    write_photos(photo_dataset / "150_zkx dog", names=("coffee",))
    two = summarize_dataset(str(photo_dataset))
    assert two.trigger_words == ["zkx", "sks"] and two.samples_per_epoch == 154  # most seen first
    assert two.trigger_word == "zkx" and two.class_words == ["dog", "cat"]
    assert two.captioned == 2 and "repeats 2–150" in two.line


def test_dataset_summary_reports_errors_as_its_line(tmp_path):
    assert "does not exist" in summarize_dataset(str(tmp_path / "missing")).line
    assert "Choose a dataset folder" in summarize_dataset("  ").line


def test_dataset_folders_are_listed_for_the_dropdown(tmp_path):
    (tmp_path / "b_set").mkdir()
    (tmp_path / "a_set").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.txt").write_text("x")
    assert list_dataset_folders(tmp_path) == [str(tmp_path / "a_set"), str(tmp_path / "b_set")]
    assert list_dataset_folders(tmp_path / "missing") == []


# ---- estimate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bucketing, batch, accumulation, max_steps", [
    (False, 1, 1, 0), (True, 2, 1, 0), (True, 3, 2, 0), (True, 2, 1, 7)])
def test_estimated_steps_are_the_runs_steps(tmp_path, bucketing, batch, accumulation, max_steps):
    root = tmp_path / "data"
    write_photos(root / "3_sks thing", names=("chelsea", "astronaut", "coffee", "rocket"), size=160)
    config = small_config(root, tmp_path / "out")
    config.data.bucketing = bucketing
    config.train.batch_size, config.train.grad_accumulation = batch, accumulation
    config.train.max_steps, config.train.epochs = max_steps, 3
    plan = make_plan(config)
    result = estimate(config, GPU_24GB)
    assert (result.steps.total_steps, result.steps.epochs) == (plan.total_steps, plan.epochs)
    assert result.steps.images == 4


def test_time_and_memory_move_the_way_the_settings_do(photo_dataset):
    config = small_config(photo_dataset, photo_dataset)
    config.data.resolution, config.train.batch_size = 512, 2
    base_time, basis = seconds_per_step(config, GPU_24GB)
    base_memory, memory_basis = memory_gb(config, GPU_24GB)
    assert "3090" in basis and "activations" in memory_basis
    config.train.gradient_checkpointing = True
    assert seconds_per_step(config, GPU_24GB)[0] > base_time
    assert memory_gb(config, GPU_24GB)[0] < base_memory
    config.train.gradient_checkpointing = False
    config.data.resolution = 768
    assert seconds_per_step(config, GPU_24GB)[0] > base_time and memory_gb(config, GPU_24GB)[0] > base_memory
    measured = dataclasses.replace(GPU_24GB, seconds_per_image_512=1.0)
    assert "measured" in seconds_per_step(config, measured)[1]
    unknown = DeviceInfo("cuda", "Mystery GPU 9000", 8.0)
    assert "no timing known" in seconds_per_step(config, unknown)[1]


def test_estimate_warns_when_it_will_not_fit_and_about_unreadable_images(photo_dataset):
    config = small_config(photo_dataset, photo_dataset)
    config.data.resolution, config.train.batch_size = 1024, 8
    (photo_dataset / "2_sks cat" / "broken.png").write_bytes(b"not a png")
    result = estimate(config, DeviceInfo("cuda", "NVIDIA GeForce RTX 3060", 12.0))
    assert result.fits is False
    text = result.markdown()
    assert "May not fit in 12 GB" in text and "broken.png" in text and "steps" in text
    assert estimate(config, DeviceInfo("cpu", "CPU")).fits is None


# ---- runs on disk ------------------------------------------------------------------------------

def test_runs_from_the_cli_and_the_tab_are_listed_with_their_losses(photo_dataset, tmp_path):
    runs = tmp_path / "runs"
    good = runs / "cat_v1"
    good.mkdir(parents=True)
    (good / "config.toml").write_text(changed_config(photo_dataset).to_toml(), encoding="utf-8")
    (good / "log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 0.1 * s}) for s in (1, 2, 3))
                                    + "\nnot json\n", encoding="utf-8")
    (good / "resume.lsstate").write_bytes(b"x")
    broken = runs / "<b>broken"
    broken.mkdir()
    (broken / "config.toml").write_text("this is [not toml", encoding="utf-8")
    (runs / "not_a_run").mkdir()
    records = list_runs([runs, runs])  # the same folder twice is listed once
    assert sorted(r.name for r in records) == ["<b>broken", "cat_v1"]
    record = read_run(good)
    assert record.last_step == 3 and record.last_loss == pytest.approx(0.3) and record.resumable
    assert "1 unreadable line" in record.problem and record.config.output.name == "cat_v2"
    assert read_run(broken).config is None and "not valid TOML" in read_run(broken).problem
    table = runs_table_html(records)
    assert "&lt;b&gt;broken" in table and "<b>broken" not in table and "0.3000" in table


# ---- the tab's actions (no gradio) -------------------------------------------------------------

def folders(tmp_path) -> train_actions.Folders:
    (tmp_path / "Lora").mkdir(exist_ok=True)
    return train_actions.Folders(tmp_path / "Lora", tmp_path / "runs")


def form_list(photo_dataset, **changes) -> list:
    values = {**form.default_values(), "data.train_dir": str(photo_dataset), "output.name": "cat_v1",
              "output.trigger_word": "sks", **changes}
    return form.values_to_list(values)


def test_start_checks_the_form_before_taking_the_run(photo_dataset, tmp_path):
    calls = []
    outcome = train_actions.start_training(False, form.METHOD_LORA, form_list(photo_dataset, **{"network.rank": 0}),
                                           folders(tmp_path), run=lambda c, r: calls.append(c))
    assert not outcome.started and not calls and "network.rank is 0" in outcome.result_html
    assert "class='error'" in outcome.result_html


@pytest.mark.parametrize("state, expected", [(FINISHED, "Saved"), (CANCELLED, "Resume"), (FAILED, "disk full")])
def test_start_reports_each_ending(photo_dataset, tmp_path, state, expected):
    sample = write_photos(tmp_path / "samples", names=("coffee",)) / "coffee.png"
    received = []

    def run(config, resume, checked):
        received.append((config, resume, checked))
        return RunStatus(run_id="r1", name="cat_v1", state=state, step=5, total_steps=10, elapsed_s=65,
                         result=str(tmp_path / "Lora" / "cat_v1.safetensors"), error="disk full" if
                         state == FAILED else "cancelled", samples=[[5, str(sample)], [6, "/gone.png"]],
                         files=[str(tmp_path / "Lora" / "cat_v1-000001.safetensors")],
                         left_out=[{"path": "/d/1_x/<b>.png", "code": "broken", "reason": "cannot be decoded"}])

    outcome = train_actions.start_training(False, form.METHOD_LORA, form_list(photo_dataset), folders(tmp_path), run)
    config, resume, checked = received[0]
    assert config.output.output_dir == str(tmp_path / "Lora") and resume is False
    assert checked.spec.num_train_images == 2  # the pre-flight ran before the run, and the run gets it
    assert outcome.started and expected in outcome.result_html
    assert "Left out 1 file" in outcome.result_html and "&lt;b&gt;.png" in outcome.result_html
    assert outcome.samples == [(str(sample), "step 5")]
    assert outcome.prompt == ("<lora:cat_v1:0.8> sks" if state == FINISHED else "")


def test_a_runs_settings_load_back_into_the_form(photo_dataset, tmp_path):
    f = folders(tmp_path)
    run_dir = f.runs_dir / "cat_v2"
    run_dir.mkdir(parents=True)
    config = changed_config(photo_dataset)
    (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    records, choices = train_actions.run_choices(f)
    assert choices == ["cat_v2"]  # the picker shows run names, not full paths
    method, values, message = train_actions.load_run(choices[0], f)
    assert method == form.METHOD_LORA and "cat_v2" in message
    assert form.config_from_values(form.values_from_list(values), method).to_dict() == config.to_dict()
    assert train_actions.load_run(str(tmp_path / "nope"), f)[1] is None


def test_export_writes_a_toml_the_cli_reads(photo_dataset, tmp_path):
    path, message = train_actions.export_settings(form.METHOD_LORA, form_list(photo_dataset), folders(tmp_path),
                                                  checkpoint="/m/sd15.safetensors")
    loaded = TrainConfig.from_toml(Path(path))
    assert Path(path).name == "cat_v1.toml" and "python -m lib_training" in message
    assert loaded.model.checkpoint == "/m/sd15.safetensors" and loaded.output.name == "cat_v1"
    bad_path, bad = train_actions.export_settings(form.METHOD_LORA, form_list(photo_dataset, **{"train.epochs": None}),
                                                  folders(tmp_path))
    assert bad_path is None and "Epochs" in bad


def test_dataset_line_fills_an_empty_trigger_word_only(photo_dataset):
    line, trigger = train_actions.dataset_line(str(photo_dataset), "", ".txt", "")
    assert trigger == "sks" and "2 images" in line
    assert train_actions.dataset_line(str(photo_dataset), "", ".txt", "mine")[1] == "mine"
