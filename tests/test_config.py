"""Settings: TOML round trip, type checks, validation messages."""

from __future__ import annotations

import pytest

from lib_training.config import TrainConfig, tomllib
from lib_training.errors import SettingsError
from lib_training.fileio import path_inside, validate_output_name


def test_toml_round_trip_keeps_every_value(tmp_path):
    config = TrainConfig()
    config.network.rank, config.optimizer.unet_lr = 128, 1e-4
    config.train.sample_prompts = ['a "quoted" prompt', "sks cat\\dog"]
    config.output.name = "face v2"
    path = tmp_path / "run.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config


@pytest.mark.parametrize("text, message", [
    ("[nework]\nrank = 4\n", "unknown section"),
    ("[network]\nrnak = 4\n", "unknown setting network.rnak"),
    ("[network]\nrank = \"big\"\n", "network.rank must be a int"),
    ("[data]\nflip = 1\n", "must be true or false"),
    ("[network\n", "not valid TOML"),
])
def test_bad_config_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        TrainConfig.from_toml(path)


def test_integers_are_accepted_where_floats_are_expected():
    config = TrainConfig.from_dict(tomllib.loads("[network]\nalpha = 8\n"))
    assert config.network.alpha == 8.0 and isinstance(config.network.alpha, float)


@pytest.mark.parametrize("section, key, value, message", [
    ("network", "rank", 0, "at least 1"),
    ("network", "alpha", 0.0, "must be > 0"),
    ("optimizer", "unet_lr", -1.0, "cannot be negative"),
    ("optimizer", "optimizer", "sgd", "use one of"),
    ("train", "batch_size", 0, "at least 1"),
    ("data", "resolution", 500, "multiple of 8"),
    ("data", "caption_dropout", 1.5, "probability"),
])
def test_validation_names_the_setting(tmp_path, section, key, value, message):
    config = TrainConfig()
    config.data.train_dir = str(tmp_path)
    setattr(getattr(config, section), key, value)
    with pytest.raises(SettingsError, match=message):
        config.validate()


def test_nothing_to_train_is_refused(tmp_path):
    config = TrainConfig()
    config.data.train_dir = str(tmp_path)
    config.optimizer.unet_lr = 0.0
    config.network.train_text_encoder = False
    with pytest.raises(SettingsError, match="nothing would be trained"):
        config.validate()


@pytest.mark.parametrize("name", ["", "a/b", "..", "con", "x:y", "a<b"])
def test_bad_output_names(name):
    with pytest.raises(SettingsError):
        validate_output_name(name)


def test_good_output_names_and_paths_stay_inside(tmp_path):
    assert validate_output_name(" my lora v2 ") == "my lora v2"
    assert validate_output_name("face.safetensors") == "face"
    assert path_inside(tmp_path, "x.safetensors").parent == tmp_path.resolve()
    with pytest.raises(SettingsError):
        path_inside(tmp_path, "../x.safetensors")
