"""Caption tools: prefix, find/replace, atomic writes, tag frequency, and captioning with a tiny BLIP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import write_photos
from lib_training.data import caption_tools
from lib_training.data.caption_tools import (
    add_prefix,
    caption_path,
    find_replace,
    prefix_captions,
    scan_folder,
    tag_frequency_table,
    write_caption,
)
from lib_training.data.captioner import BlipCaptioner, Captioner, caption_folder
from lib_training.data.folders import tag_frequency
from lib_training.data.images import load_rgb
from lib_training.errors import CheckpointError, DatasetError, SettingsError


@pytest.fixture
def project(tmp_path) -> Path:
    """img/10_sks cat: astronaut (2-line .txt), chelsea (latin-1 .caption), coffee (no caption); reg/1_cat: rocket."""
    root = tmp_path / "project"
    subset = write_photos(root / "img" / "10_sks cat", names=("astronaut", "chelsea", "coffee"), size=48,
                          captions={"astronaut": "a woman, red suit\nsecond line"})
    (subset / "chelsea.caption").write_bytes("a cat, café chair".encode("latin-1"))
    write_photos(root / "reg" / "1_cat", names=("rocket",), size=48, captions={"rocket": "a cat"})
    return root


def train_dir(root: Path) -> Path:
    return root / "img" / "10_sks cat"


# ----------------------------------------------------------------------------- prefix


@pytest.mark.parametrize("caption, trigger, class_word, expected", [
    ("a photo of a cat", "sks", "cat", "sks, a photo of a cat"),
    ("a woman in red", "nosnja", "outfit", "nosnja outfit, a woman in red"),
    ("sks cat, sitting", "sks", "cat", "sks cat, sitting"),
    ("", "sks", "cat", "sks cat"),
    ("SKS, dog", "sks", "", "SKS, dog"),
    ("sksdog on grass", "sks", "", "sks, sksdog on grass"),
    ("  a dog  ", "sks", "", "sks, a dog"),
    ("a dog", "", "", "a dog"),
])
def test_add_prefix(caption, trigger, class_word, expected):
    assert add_prefix(caption, trigger, class_word) == expected
    assert add_prefix(expected, trigger, class_word) == expected  # never duplicated


def test_prefix_captions_edits_training_captions_in_place(project):
    reg_caption = project / "reg" / "1_cat" / "rocket.txt"
    reg_before = reg_caption.read_bytes()

    result = prefix_captions(project, "sks", "cat")

    subset = train_dir(project)
    assert sorted(p.name for p in result.changed) == ["astronaut.txt", "chelsea.caption", "coffee.txt"]
    assert (subset / "astronaut.txt").read_text(encoding="utf-8") == "sks cat, a woman, red suit\nsecond line\n"
    assert (subset / "chelsea.caption").read_text(encoding="utf-8") == "sks, a cat, café chair\n"  # now UTF-8
    assert not (subset / "chelsea.txt").exists()  # the file training reads was edited, no second caption
    assert (subset / "coffee.txt").read_text() == "sks cat\n"
    assert reg_caption.read_bytes() == reg_before  # class captions never get the trigger
    spec = scan_folder(project)
    assert all(item.caption.startswith("sks") for item in spec.train_items)

    again = prefix_captions(project, "sks", "cat")
    assert again.changed == [] and again.unchanged == 3
    with pytest.raises(SettingsError, match="trigger word"):
        prefix_captions(project, " ")


def test_prefix_without_creating_missing_captions(project):
    result = prefix_captions(project, "sks", create_missing=False)
    assert not (train_dir(project) / "coffee.txt").exists() and len(result.changed) == 2


# ----------------------------------------------------------------------------- find / replace


def test_find_replace_plain_regex_case_and_tidy(project):
    subset = train_dir(project)
    (subset / "coffee.txt").write_text("a cup (red), Red table, blurry, red")
    chelsea_before = (subset / "chelsea.caption").read_bytes()

    result = find_replace(project, "(red)", "(blue)")  # plain text: parentheses are literal
    assert result.replacements == 1 and [p.name for p in result.changed] == ["coffee.txt"]
    assert (subset / "coffee.txt").read_text() == "a cup (blue), Red table, blurry, red\n"
    assert (subset / "chelsea.caption").read_bytes() == chelsea_before  # no match: bytes untouched

    assert find_replace(project, "red", "green", ignore_case=True).replacements == 3
    assert (subset / "coffee.txt").read_text() == "a cup (blue), green table, blurry, green\n"
    assert (subset / "astronaut.txt").read_text() == "a woman, green suit\nsecond line\n"

    assert find_replace(project, r"(\w+) table", r"table of \1", regex=True).replacements == 1
    assert (subset / "coffee.txt").read_text() == "a cup (blue), table of green, blurry, green\n"

    assert find_replace(project, "blurry", "").replacements == 1  # removing a tag leaves no ", ,"
    assert (subset / "coffee.txt").read_text() == "a cup (blue), table of green, green\n"

    assert find_replace(project, "a cat", "a kitten").replacements == 1  # training captions only
    assert (project / "reg" / "1_cat" / "rocket.txt").read_text() == "a cat"
    assert find_replace(project, "a cat", "a kitten", include_reg=True).replacements == 1
    assert (project / "reg" / "1_cat" / "rocket.txt").read_text() == "a kitten\n"


def test_find_replace_refuses_bad_patterns_before_writing(project):
    before = {p: p.read_bytes() for p in train_dir(project).iterdir()}
    with pytest.raises(SettingsError, match="not a valid regular expression"):
        find_replace(project, "([unclosed", "x", regex=True)
    with pytest.raises(SettingsError, match="empty"):
        find_replace(project, "", "x")
    assert {p: p.read_bytes() for p in train_dir(project).iterdir()} == before


# ----------------------------------------------------------------------------- writing


def test_write_caption_is_atomic_and_keeps_the_old_caption_on_failure(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    target = caption_path(image)
    assert target == tmp_path / "a.txt"
    write_caption(target, "first")
    assert target.read_text() == "first\n"

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(DatasetError, match="No space left"):
        write_caption(target, "second")
    monkeypatch.undo()
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.txt"]  # no temp file left behind
    with pytest.raises(SettingsError, match="not a caption file"):
        write_caption(image, "oops")
    (tmp_path / "a.caption").write_text("old")
    (tmp_path / "a.txt").unlink()
    assert caption_path(image) == tmp_path / "a.caption"


# ----------------------------------------------------------------------------- tag frequency


def test_tag_frequency_table_sums_the_per_folder_frequency(project):
    subset = train_dir(project)
    (subset / "coffee.txt").write_text("A Cat, cat, cup")  # lower-cased, once per image
    spec = scan_folder(project)

    table = tag_frequency_table(project)

    per_folder = tag_frequency(spec)
    totals: dict[str, int] = {}
    for counts in per_folder.values():
        for tag, count in counts.items():
            totals[tag] = totals.get(tag, 0) + count
    assert {t.tag: t.count for t in table} == totals
    assert table[0].tag == "a cat" and table[0].count == 3  # chelsea, coffee, and the class image
    assert [t.count for t in table] == sorted((t.count for t in table), reverse=True)
    assert tag_frequency_table(spec) == table


# ----------------------------------------------------------------------------- captioning


class FakeCaptioner:
    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def caption(self, image: Image.Image) -> str:
        assert image.mode == "RGB"
        self.seen.append(image.size)
        return f"  a picture   {len(self.seen)} "


def test_caption_folder_writes_missing_captions_with_the_trigger(project):
    subset = train_dir(project)
    (subset / "astronaut.txt").write_text("")  # empty counts as missing
    (subset / "broken.png").write_text("not an image")
    captioner = FakeCaptioner()
    assert isinstance(captioner, Captioner)
    progress = []

    result = caption_folder(project, captioner, "sks", on_progress=lambda *a: progress.append(a))

    assert sorted(p.name for p in result.written) == ["astronaut.txt", "coffee.txt"]
    assert [p.name for p in result.kept] == ["chelsea.png"]
    assert [p.name for p, _ in result.failed] == ["broken.png"] and "not an image" in result.failed[0][1]
    assert (subset / "astronaut.txt").read_text() == "sks, a picture 1\n"
    assert (subset / "coffee.txt").read_text() == "sks, a picture 2\n"
    assert not (subset / "broken.txt").exists()
    assert [(d, t) for d, t, _ in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert progress[-1][2] == subset / "coffee.png"
    assert (project / "reg" / "1_cat" / "rocket.txt").read_text() == "a cat"

    again = caption_folder(project, FakeCaptioner(), "sks", overwrite=True, include_reg=True, class_word="cat")
    assert len(again.written) == 4
    assert (subset / "chelsea.caption").read_text() == "sks cat, a picture 2\n"
    assert (project / "reg" / "1_cat" / "rocket.txt").read_text() == "cat, a picture 4\n"  # no trigger


# ----------------------------------------------------------------------------- BLIP


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A random BLIP captioner with a 20-word vocabulary, saved like a downloaded model (safetensors)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + (
        "a the cat dog photo of on sitting red blue chair woman man grass").split()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    text = dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                pad_token_id=0, bos_token_id=5, eos_token_id=3, sep_token_id=3)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    out = folder / "blip"
    model.save_pretrained(out, safe_serialization=True)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(out)
    return out


def test_blip_captioner_captions_a_folder(tiny_blip, project):
    captioner = BlipCaptioner(tiny_blip, local_files_only=True, max_new_tokens=6, num_beams=2)
    assert isinstance(captioner, Captioner) and captioner._model is None  # loaded lazily
    subset = train_dir(project)
    direct = captioner.caption(load_rgb(subset / "coffee.png"))
    assert isinstance(direct, str) and direct.strip()
    vocabulary = set((tiny_blip.parent / "vocab.txt").read_text().split())  # transformers 5 saves tokenizer.json
    assert set(direct.split()) <= vocabulary

    result = caption_folder(project, captioner, "sks")

    assert [p.name for p in result.written] == ["coffee.txt"]
    assert (subset / "coffee.txt").read_text() == add_prefix(direct, "sks") + "\n"  # greedy/beam: deterministic
    captioner.unload()
    assert captioner._model is None


def test_blip_captioner_refuses_pickles_and_missing_folders(tiny_blip, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for item in tiny_blip.iterdir():
        if item.name != "model.safetensors":
            (pickled / item.name).write_bytes(item.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")
    image = Image.new("RGB", (32, 32))
    with pytest.raises(CheckpointError, match="safetensors"):
        BlipCaptioner(pickled, local_files_only=True).caption(image)
    with pytest.raises(CheckpointError, match="does not exist"):
        BlipCaptioner(tmp_path / "missing", local_files_only=True).caption(image)
    with pytest.raises(CheckpointError, match="Cannot load the BLIP captioner"):
        BlipCaptioner("no-such-org/no-such-blip", local_files_only=True).caption(image)


def test_dataset_modules_import_nothing_from_the_webui():
    import re

    folder = Path(caption_tools.__file__).parent
    for name in ("importer", "health", "image_hash", "preprocess", "caption_tools", "captioner"):
        source = (folder / f"{name}.py").read_text()
        assert not re.search(r"^\s*(import|from)\s+(gradio|modules|launch)\b", source, re.MULTILINE), name
