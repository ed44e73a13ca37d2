"""Importing photos into a managed dataset folder in kohya's layout; originals are only read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conftest import write_photos
from lib_training.data.folders import scan_dataset
from lib_training.data.importer import (
    dataset_dirs,
    import_files,
    import_folder,
    subset_folder_name,
)
from lib_training.errors import DatasetError, SettingsError


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def captions_of(root: Path) -> dict[tuple[str, str], str]:
    dirs = dataset_dirs(root)
    spec = scan_dataset(dirs.train_dir, dirs.reg_dir)
    return {(item.subset, item.path.name): item.caption for item in spec.train_items + spec.reg_items}


def test_plain_folder_is_copied_into_a_kohya_subset_and_originals_stay(tmp_path):
    source = write_photos(tmp_path / "photos", names=("chelsea", "astronaut", "coffee"), size=64,
                          captions={"chelsea": "a cat on a chair"})
    (source / "astronaut.caption").write_text("a woman in a space suit")
    (source / "notes.md").write_text("shot in May")
    (source / "nested").mkdir()
    before = snapshot(source)

    result = import_folder(source, tmp_path / "managed", trigger="sks", class_word="cat", repeats=12)

    subset = tmp_path / "managed" / "img" / "12_sks cat"
    assert result.subsets == [subset] and not result.kohya_layout
    assert sorted(p.name for p in result.images) == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert sorted(p.name for p in result.captions) == ["astronaut.caption", "chelsea.txt"]
    assert [s.path.name for s in result.skipped] == ["notes.md"] and "PNG or JPEG" in result.skipped[0].reason
    assert captions_of(tmp_path / "managed") == {
        ("12_sks cat", "astronaut.png"): "a woman in a space suit",
        ("12_sks cat", "chelsea.png"): "a cat on a chair",
        ("12_sks cat", "coffee.png"): "sks cat",  # no caption: kohya falls back to the folder name
    }
    for name in ("chelsea.png", "chelsea.txt", "astronaut.caption"):
        assert (subset / name).read_bytes() == (source / name).read_bytes()
    assert snapshot(source) == before
    assert not [p for p in subset.iterdir() if p.name.startswith(".")]  # no temp files left
    assert result.dirs.train_dir == tmp_path / "managed" / "img" and result.dirs.reg_dir is None


def test_importing_again_copies_nothing_and_keeps_edited_captions(tmp_path):
    source = write_photos(tmp_path / "photos", names=("chelsea", "coffee"), size=64, captions={"chelsea": "a cat"})
    root = tmp_path / "managed"
    import_folder(source, root, trigger="sks", class_word="cat")
    edited = root / "img" / "10_sks cat" / "chelsea.txt"
    edited.write_text("sks cat, edited by hand")

    again = import_folder(source, root, trigger="sks", class_word="cat")

    assert again.images == [] and sorted(p.name for p in again.already_present) == ["chelsea.png", "coffee.png"]
    assert edited.read_text() == "sks cat, edited by hand"
    assert len(list((root / "img" / "10_sks cat").iterdir())) == 3


def test_name_clashes_get_a_suffix_with_their_captions(tmp_path):
    first = write_photos(tmp_path / "a", names=("chelsea",), size=64, captions={"chelsea": "first"})
    second = write_photos(tmp_path / "b", names=("coffee",), size=64, captions={"coffee": "second"})
    (second / "coffee.png").rename(second / "chelsea.png")
    (second / "coffee.txt").rename(second / "chelsea.txt")
    root = tmp_path / "managed"

    import_files([first / "chelsea.png"], root, trigger="sks")
    result = import_files([second / "chelsea.png"], root, trigger="sks")

    assert [p.name for p in result.images] == ["chelsea-2.png"]
    subset = root / "img" / "10_sks"
    assert (subset / "chelsea.txt").read_text() == "first" and (subset / "chelsea-2.txt").read_text() == "second"
    assert (subset / "chelsea-2.png").read_bytes() == (second / "chelsea.png").read_bytes()


def test_file_list_pairs_listed_captions_and_reports_the_rest(tmp_path):
    photos = write_photos(tmp_path / "upload1", names=("chelsea", "coffee"), size=64,
                          captions={"chelsea": "caption beside the image"})
    uploads = tmp_path / "upload2"
    uploads.mkdir()
    (uploads / "chelsea.txt").write_text("caption uploaded with it")
    (uploads / "orphan.txt").write_text("no image")
    (uploads / "anim.gif").write_bytes(b"GIF89a")
    files = [photos / "chelsea.png", photos / "coffee.png", uploads / "chelsea.txt", uploads / "orphan.txt",
             uploads / "anim.gif", uploads / "gone.png"]

    result = import_files(files, tmp_path / "managed", trigger="sks", class_word="cat", repeats=3)

    subset = tmp_path / "managed" / "img" / "3_sks cat"
    assert (subset / "chelsea.txt").read_text() == "caption uploaded with it"
    assert sorted(p.name for p in result.images) == ["chelsea.png", "coffee.png"]
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert set(reasons) == {"orphan.txt", "anim.gif", "gone.png"}
    assert "No image named 'orphan'" in reasons["orphan.txt"] and "does not exist" in reasons["gone.png"]
    with pytest.raises(DatasetError, match="None of the 2 selected files is an image"):
        import_files([uploads / "orphan.txt", uploads / "anim.gif"], tmp_path / "other", trigger="sks")


def test_existing_kohya_folders_import_as_is(tmp_path):
    project = tmp_path / "kohya_project"
    write_photos(project / "img" / "5_ohwx woman", names=("astronaut",), size=64, captions={"astronaut": "ohwx woman"})
    write_photos(project / "reg" / "1_woman", names=("coffee", "rocket"), size=64)
    (project / "model").mkdir()
    before = snapshot(project)
    progress = []

    result = import_folder(project, tmp_path / "managed", trigger="ignored", repeats=99,
                           on_progress=lambda done, total: progress.append((done, total)))

    assert result.kohya_layout
    assert captions_of(tmp_path / "managed") == captions_of(project)
    assert {p.relative_to(tmp_path / "managed").as_posix() for p in result.subsets} == {"img/5_ohwx woman", "reg/1_woman"}
    assert progress[-1] == (3, 3) and [d for d, _ in progress] == [1, 2, 3]
    assert snapshot(project) == before

    training_folder = tmp_path / "train"  # a kohya training folder without img/
    write_photos(training_folder / "3_sks dog", names=("chelsea",), size=64)
    result = import_folder(training_folder, tmp_path / "managed2")
    assert result.kohya_layout and (tmp_path / "managed2" / "img" / "3_sks dog" / "chelsea.png").is_file()


def test_class_images_go_to_reg_without_the_trigger(tmp_path):
    source = write_photos(tmp_path / "class", names=("coffee",), size=64)
    result = import_folder(source, tmp_path / "managed", trigger="sks", class_word="cup", repeats=1, is_reg=True)
    assert result.subsets == [tmp_path / "managed" / "reg" / "1_cup"]


@pytest.mark.parametrize("repeats, trigger, class_word, message", [
    (0, "sks", "", "1 or more"),
    (2.5, "sks", "", "whole number"),
    (1, "a/b", "", "folder name"),
    (1, "..", "", "folder name"),
    (1, "", "c:at", "folder name"),
    (1, " ", "", "Give a trigger word"),
])
def test_bad_subset_names_are_refused(repeats, trigger, class_word, message):
    with pytest.raises(SettingsError, match=message):
        subset_folder_name(repeats, trigger, class_word)


def test_subset_name_joins_words():
    assert subset_folder_name(10, " sks ", "  old   man ") == "10_sks old man"
    assert subset_folder_name(1, "", "woman") == "1_woman"


def test_bad_sources_are_refused_before_copying(tmp_path):
    source = write_photos(tmp_path / "photos", names=("chelsea",), size=64)
    with pytest.raises(SettingsError, match="overlap"):
        import_folder(source, source / "dataset", trigger="sks")
    with pytest.raises(SettingsError, match="overlap"):
        import_folder(source, source, trigger="sks")
    with pytest.raises(DatasetError, match="does not exist"):
        import_folder(tmp_path / "missing", tmp_path / "managed", trigger="sks")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No images"):
        import_folder(tmp_path / "empty", tmp_path / "managed", trigger="sks")
    assert not (tmp_path / "managed").exists() and not (source / "dataset").exists()
