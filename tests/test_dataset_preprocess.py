"""Preprocess into a new folder: crops, keep-aspect, flips, numbering of image/caption pairs; originals only read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_photos
from lib_training.cli import build_parser, main as cli_main
from lib_training.data.folders import scan_dataset
from lib_training.data.images import load_rgb, resize_and_crop
from lib_training.data.importer import dataset_dirs
from lib_training.data.preprocess import (
    CROP_MODES,
    PreprocessOptions,
    crop_around,
    preprocess_dataset,
    saliency_focus,
)
from lib_training.errors import DatasetError, SettingsError


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def halves(size=(192, 64)) -> Image.Image:
    """Left half red, right half blue."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:, : size[0] // 2, 0] = 255
    array[:, size[0] // 2:, 2] = 255
    return Image.fromarray(array)


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    subset = write_photos(root / "img" / "10_sks cat", names=("astronaut", "chelsea", "coffee"), size=96,
                          captions={"astronaut": "sks cat, astronaut\nsecond line"})
    (subset / "chelsea.caption").write_bytes("sks cat, café".encode("latin-1"))
    write_photos(root / "reg" / "1_cat", names=("rocket",), size=96, captions={"rocket": "a cat"})
    return root


def test_centre_crop_with_flips_keeps_pairs_and_never_touches_originals(project, tmp_path):
    before = snapshot(project)
    out = tmp_path / "out"

    result = preprocess_dataset(project, out, PreprocessOptions(resolution=64, crop="center", flip=True))

    assert snapshot(project) == before
    train = out / "img" / "10_sks cat"
    assert sorted(p.name for p in train.iterdir()) == [
        "0001.png", "0001.txt", "0001_flipped.png", "0001_flipped.txt",
        "0002.png", "0002.txt", "0002_flipped.png", "0002_flipped.txt",
        "0003.png", "0003_flipped.png"]  # coffee had no caption: none is invented
    assert sorted(p.name for p in (out / "reg" / "1_cat").iterdir()) == ["0001.png", "0001.txt"]  # no flips
    assert (train / "0001.txt").read_text(encoding="utf-8") == "sks cat, astronaut\nsecond line\n"
    assert (train / "0002.txt").read_text(encoding="utf-8") == "sks cat, café\n"  # latin-1 in, UTF-8 out
    assert (train / "0002_flipped.txt").read_bytes() == (train / "0002.txt").read_bytes()
    for image in result.images:
        with Image.open(image.image) as img:
            assert img.size == (64, 64) and img.mode == "RGB"
    expected = np.asarray(resize_and_crop(load_rgb(project / "img" / "10_sks cat" / "chelsea.png"), 64, 64), dtype=np.int16)
    assert np.array_equal(pixels(train / "0002.png"), expected)
    assert np.array_equal(pixels(train / "0002_flipped.png"), expected[:, ::-1])
    by_output = {(i.image.name, i.image.parent.name): (i.source.name, i.flipped) for i in result.images}
    assert by_output[("0003_flipped.png", "10_sks cat")] == ("coffee.png", True)
    assert by_output[("0001.png", "1_cat")] == ("rocket.png", False)
    dirs = dataset_dirs(out)  # the output is a dataset again, in the same layout
    spec = scan_dataset(dirs.train_dir, dirs.reg_dir)
    assert (spec.num_train_images, spec.num_reg_images) == (6, 1)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging folder renamed away


def test_keep_aspect_downscales_the_short_side_only_and_applies_exif_rotation(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(source / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(source / "b.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (160, 240, 3), dtype=np.uint8)).save(
        source / "c.jpg", exif=exif.tobytes())

    result = preprocess_dataset(source, tmp_path / "out", PreprocessOptions(resolution=128, crop="keep_aspect"))

    sizes = {i.source.name: Image.open(i.image).size for i in result.images}
    assert sizes == {"a.png": (192, 128), "b.png": (100, 80), "c.jpg": (128, 192)}  # c: stored 240x160 sideways
    assert np.array_equal(pixels(tmp_path / "out" / "0002.png"), pixels(source / "b.png"))  # small: unchanged


def test_focal_crop_without_faces_follows_the_detailed_part(tmp_path):
    array = np.full((64, 192, 3), 128, dtype=np.uint8)
    array[8:56, 8:56] = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)  # subject at the left
    source = tmp_path / "src"
    source.mkdir()
    Image.fromarray(array).save(source / "wide.png")
    img = Image.fromarray(array)
    assert saliency_focus(img)[0] < 0.25
    assert saliency_focus(Image.new("RGB", (50, 50), (9, 9, 9))) == (0.5, 0.5)

    focal = preprocess_dataset(source, tmp_path / "focal",
                               PreprocessOptions(resolution=64, crop="focal", detect_faces=False))
    preprocess_dataset(source, tmp_path / "centre", PreprocessOptions(resolution=64, crop="center"))

    assert focal.face_detector == "none"
    assert pixels(tmp_path / "focal" / "0001.png").std() > 30  # the textured subject
    assert pixels(tmp_path / "centre" / "0001.png").std() < 1  # the flat middle


def test_a_face_detector_moves_the_crop_and_auto_falls_back_to_centre(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    halves().save(source / "wide.png")
    face_right = lambda img: [(150.0, 20.0, 30.0, 30.0)]  # noqa: E731
    no_face = lambda img: []  # noqa: E731

    focal = preprocess_dataset(source, tmp_path / "focal", PreprocessOptions(resolution=64, crop="focal"),
                               face_detector=face_right)
    preprocess_dataset(source, tmp_path / "auto", PreprocessOptions(resolution=64, crop="auto"),
                       face_detector=no_face)

    assert focal.face_detector == "custom"
    right = pixels(tmp_path / "focal" / "0001.png")
    assert right[..., 2].min() == 255 and right[..., 0].max() == 0  # all blue: the crop sits on the face
    middle = pixels(tmp_path / "auto" / "0001.png")
    assert middle[:, :28, 0].min() > 200 and middle[:, 36:, 2].min() > 200  # centre: half red, half blue
    edge = np.asarray(crop_around(halves(), 64, 64, (0.0, 0.5)))
    assert edge[..., 0].min() == 255  # a focus at the border clamps the crop inside the image


def test_opencv_haar_faces_when_installed(tmp_path):
    pytest.importorskip("cv2")
    from skimage import data

    from lib_training.data.preprocess import opencv_face_detector

    detector = opencv_face_detector()
    assert detector is not None
    face = Image.fromarray(data.astronaut()).resize((256, 256))
    wide = Image.new("RGB", (768, 256), (128, 128, 128))
    wide.paste(face, (512, 0))
    faces = detector(wide)
    assert faces and all(x >= 512 for x, _, _, _ in faces)
    source = tmp_path / "src"
    source.mkdir()
    wide.save(source / "wide.png")
    result = preprocess_dataset(source, tmp_path / "out", PreprocessOptions(resolution=128, crop="auto"))
    assert result.face_detector == "opencv-haar"
    assert pixels(tmp_path / "out" / "0001.png").std() > 20  # the photo, not the grey padding


def test_broken_images_are_skipped_and_numbering_stays_contiguous(tmp_path):
    source = write_photos(tmp_path / "src", names=("astronaut", "chelsea"), size=64,
                          captions={"astronaut": "one", "chelsea": "two"})
    (source / "b_broken.png").write_text("not an image")
    (source / "b_broken.txt").write_text("never written")

    result = preprocess_dataset(source, tmp_path / "out", PreprocessOptions(resolution=64))

    assert [s.path.name for s in result.skipped] == ["b_broken.png"] and "not an image" in result.skipped[0].reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001.png", "0001.txt", "0002.png", "0002.txt"]
    assert (tmp_path / "out" / "0002.txt").read_text() == "two\n"

    only_broken = tmp_path / "broken_only"
    only_broken.mkdir()
    (only_broken / "x.png").write_text("nope")
    with pytest.raises(DatasetError, match="None of the 1 images"):
        preprocess_dataset(only_broken, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_the_output_must_be_a_new_folder_outside_the_dataset(project, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(SettingsError, match="not empty"):
        preprocess_dataset(project, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    for inside in (project, project / "img" / "processed"):
        with pytest.raises(SettingsError, match="overlaps"):
            preprocess_dataset(project, inside)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert preprocess_dataset(project, empty, PreprocessOptions(resolution=64)).images


def test_a_failure_midway_leaves_no_output(project, tmp_path):
    def cancel(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(project, tmp_path / "out", PreprocessOptions(resolution=64), on_progress=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


@pytest.mark.parametrize("options, message", [
    (PreprocessOptions(resolution=0), "64 to 4096"),
    (PreprocessOptions(resolution=100), "multiple of 8"),
    (PreprocessOptions(crop="zoom"), "Unknown crop mode"),
])
def test_bad_options_are_refused(project, tmp_path, options, message):
    with pytest.raises(SettingsError, match=message):
        preprocess_dataset(project, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_cli_dataset_preprocess(project, tmp_path, capsys):
    for mode in CROP_MODES:  # the CLI offers every crop mode
        assert build_parser().parse_args(["dataset", "preprocess", "a", "b", "--crop", mode]).crop == mode
    out = tmp_path / "out"
    assert cli_main(["dataset", "preprocess", str(project), str(out), "--resolution", "64",
                     "--crop", "keep_aspect", "--flip"]) == 0
    assert "Wrote 7 images" in capsys.readouterr().out
    assert (out / "img" / "10_sks cat" / "0003_flipped.png").is_file()
    assert cli_main(["dataset", "preprocess", str(project), str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
