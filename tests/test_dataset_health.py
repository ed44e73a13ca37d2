"""Dataset health report: every check on purpose-made bad files, written here."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import write_photos
from lib_training.cli import main as cli_main
from lib_training.data import images as images_mod
from lib_training.data.health import (
    CLIP_WINDOW,
    ERROR,
    NOTE,
    WARNING,
    approximate_token_count,
    check_dataset,
    clip_token_counter,
)
from lib_training.data.image_hash import DHASH_THRESHOLD, PHASH_THRESHOLD, ImageHash, near_duplicate_pairs
from lib_training.data.images import load_rgb
from lib_training.errors import CheckpointError, DatasetError
from lib_training.models import clip_tokenizer

TRIGGER = "sks"


# ----------------------------------------------------------------------------- helpers


def blobs(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A smooth random colour image; different seeds give perceptually different images."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)


def photo(name: str, size: int = 128) -> Image.Image:
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    img.thumbnail((size, size))
    return img


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (costs nothing to write: the pixel data is 1x1's)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))
    return path


def paths_of(report, code: str) -> set[str]:
    issue = report.issue(code)
    return {p.name for p in issue.paths} if issue else set()


@pytest.fixture(scope="module")
def clip_counter(tmp_path_factory):
    """CLIP's real tokenizer, built offline into a temp folder (the user's cache is left alone)."""
    try:
        folder = clip_tokenizer.write_tokenizer_files(clip_tokenizer.find_bpe_file(), tmp_path_factory.mktemp("clip"))
    except CheckpointError as exc:
        pytest.skip(f"CLIP vocabulary not installed: {exc}")
    tokenizer = clip_tokenizer.load_clip_tokenizer(str(folder))
    counter = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    if counter("a photo of a cat") != 5:
        pytest.skip("the offline CLIP tokenizer does not tokenize with this transformers version")
    return counter


def check(folder: Path, **kwargs):
    kwargs.setdefault("count_tokens", approximate_token_count)
    return check_dataset(folder, **kwargs)


# ----------------------------------------------------------------------------- clean data


def test_clean_photos_have_no_issues(tmp_path):
    folder = write_photos(tmp_path / "ds", names=("chelsea", "astronaut", "coffee"), size=96,
                          captions={"chelsea": "sks, a cat", "astronaut": "sks, a woman", "coffee": "sks, a cup"})
    report = check(folder, resolution=64, trigger=TRIGGER)
    assert report.issues == [] and report.ok
    assert report.num_images == report.num_train_images == 3 and report.num_reg_images == 0
    assert sum(b.count for b in report.size_histogram) == 3
    assert "No problems found" in report.format_text()


def test_size_histogram_and_images_smaller_than_the_resolution(tmp_path):
    folder = tmp_path / "ds"
    for seed, size in enumerate([(100, 140), (300, 280), (600, 520), (2100, 2050), (400, 900)]):
        save(blobs(seed, size), folder / f"img{size[0]}.png")
    report = check(folder, resolution=512)
    assert paths_of(report, "too_small") == {"img100.png", "img300.png", "img400.png"}  # the shorter side counts
    assert report.issue("too_small").severity == WARNING
    details = {f.path.name: f.detail for f in report.issue("too_small").files}
    assert details["img300.png"] == "300x280"
    counts = {b.label: b.count for b in report.size_histogram}
    assert counts == {"0-255": 1, "256-511": 2, "512-767": 1, "768-1023": 0, "1024-1535": 0, "1536-2047": 0,
                      "2048+": 1}
    assert paths_of(check(folder, resolution=100), "too_small") == set()


# ----------------------------------------------------------------------------- broken files


def test_broken_truncated_and_non_image_files_are_errors_training_also_refuses(tmp_path):
    folder = tmp_path / "ds"
    save(photo("astronaut"), folder / "good.png")
    jpeg = io.BytesIO()
    photo("chelsea").save(jpeg, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 6 // 10])
    (folder / "text.png").write_text("this is a caption, not a picture\n")
    (folder / "page.jpg").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    (folder / "empty.webp").write_bytes(b"")
    (folder / "noise.bmp").write_bytes(bytes(range(256)) * 4)

    report = check(folder, resolution=64)

    broken = report.issue("broken")
    assert broken.severity == ERROR and not report.ok
    bad = {"truncated.jpg", "text.png", "page.jpg", "empty.webp", "noise.bmp"}
    assert paths_of(report, "broken") == bad
    details = {f.path.name: f.detail for f in broken.files}
    assert "truncated" in details["truncated.jpg"]
    assert "text" in details["text.png"] and "HTML" in details["page.jpg"] and "0 bytes" in details["empty.webp"]
    assert "delete" in broken.message  # says what to do
    for name in bad:  # the report and the training loader agree
        with pytest.raises(DatasetError):
            load_rgb(folder / name)
    load_rgb(folder / "good.png")
    assert report.num_images == 6 and sum(b.count for b in report.size_histogram) == 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", ["engine_limit", "pil_error", "pil_warning_zone", "pil_error_zone"])
def test_decompression_bombs_are_refused_from_the_header(tmp_path, monkeypatch, case):
    folder = tmp_path / "ds"
    save(blobs(1), folder / "ok.png")
    if case == "engine_limit":  # 9000x9000 = 81 Mpx: over our 67 Mpx limit, under Pillow's 89 Mpx
        png_header_only(folder / "bomb.png", 9000, 9000)
    elif case == "pil_error":  # over twice Pillow's limit: Image.open itself refuses
        png_header_only(folder / "bomb.png", 30000, 30000)
    else:  # Pillow's limit lowered (as some WebUI extensions do): 96x96 = 9216 px
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000 if case == "pil_warning_zone" else 2000)
        monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 8192 * 8192)
        save(blobs(2), folder / "bomb.png")
        (folder / "ok.png").unlink()
        save(blobs(1, (40, 40)), folder / "ok.png")  # 1600 px: under both lowered limits
    report = check(folder, resolution=32)
    issue = report.issue("too_large")
    assert issue is not None and issue.severity == ERROR
    assert paths_of(report, "too_large") == {"bomb.png"}
    assert "Downscale" in issue.message and report.issue("broken") is None


def test_engine_limit_is_read_at_call_time(tmp_path, monkeypatch):
    folder = tmp_path / "ds"
    save(blobs(1, (64, 64)), folder / "a.png")
    assert check(folder, resolution=32).issue("too_large") is None
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 64 * 63)
    assert paths_of(check(folder, resolution=32), "too_large") == {"a.png"}


# ----------------------------------------------------------------------------- converted on load


def test_grayscale_cmyk_16bit_and_transparency_are_notes(tmp_path):
    folder = tmp_path / "ds"
    save(blobs(1).convert("L"), folder / "grey.png")
    save(blobs(2).convert("CMYK"), folder / "cmyk.jpg", quality=95)
    grey16 = np.asarray(blobs(3).convert("L"), dtype=np.uint16) * 257
    save(Image.fromarray(grey16), folder / "deep.png")
    rgba = blobs(4).convert("RGBA")
    alpha = np.full((96, 96), 255, dtype=np.uint8)
    alpha[:, :30] = 0
    rgba.putalpha(Image.fromarray(alpha))
    save(rgba, folder / "cutout.png")
    save(blobs(5).convert("RGBA"), folder / "opaque_rgba.png")  # alpha channel, every pixel opaque
    save(blobs(6), folder / "plain.jpg", quality=95)

    report = check(folder, resolution=64)

    assert report.ok, report.format_text()
    assert paths_of(report, "grayscale") == {"grey.png", "deep.png"}
    assert paths_of(report, "cmyk") == {"cmyk.jpg"}
    assert paths_of(report, "high_bit_depth") == {"deep.png"}
    assert paths_of(report, "transparency") == {"cutout.png"}
    for code in ("grayscale", "cmyk", "high_bit_depth", "transparency"):
        assert report.issue(code).severity == NOTE
    assert report.issue("near_duplicate") is None  # six different images


def test_exif_rotation_is_a_note_with_the_upright_size(tmp_path):
    folder = tmp_path / "ds"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    save(blobs(1, (120, 80)), folder / "sideways.jpg", exif=exif.tobytes(), quality=95)
    upright = Image.Exif()
    upright[0x0112] = 1
    save(blobs(2, (120, 80)), folder / "upright.jpg", exif=upright.tobytes(), quality=95)

    report = check(folder, resolution=64)

    assert paths_of(report, "exif_rotation") == {"sideways.jpg"}
    assert report.issue("exif_rotation").severity == NOTE
    sizes = {f.path.name: (f.width, f.height) for f in report.images}
    assert sizes == {"sideways.jpg": (80, 120), "upright.jpg": (120, 80)}
    assert sizes["sideways.jpg"] == load_rgb(folder / "sideways.jpg").size  # as training sees it


def test_unsupported_formats_are_listed_as_ignored(tmp_path):
    folder = tmp_path / "ds"
    save(blobs(1), folder / "a.png")
    save(blobs(2), folder / "anim.gif")
    save(blobs(3), folder / "scan.tiff")
    report = check(folder, resolution=64)
    assert paths_of(report, "unsupported_format") == {"anim.gif", "scan.tiff"}
    assert report.num_images == 1


# ----------------------------------------------------------------------------- near-duplicates


def test_near_duplicates_are_paired_and_different_photos_are_not(tmp_path):
    folder = tmp_path / "ds"
    original = photo("astronaut", 160)
    save(original, folder / "a_original.png")
    save(original, folder / "b_copy.png")
    altered = ImageEnhance.Brightness(original.resize((140, 140))).enhance(1.1)
    save(altered, folder / "c_altered.jpg", quality=70)
    save(original.transpose(Image.Transpose.FLIP_LEFT_RIGHT), folder / "d_mirrored.png")
    for name in ("chelsea", "coffee", "rocket", "camera"):
        save(photo(name, 160), folder / f"e_{name}.png")

    report = check(folder, resolution=64)

    pairs = {frozenset((p.first.name, p.second.name)) for p in report.duplicates}
    assert pairs == {frozenset(("a_original.png", "b_copy.png")), frozenset(("a_original.png", "c_altered.jpg")),
                     frozenset(("b_copy.png", "c_altered.jpg"))}
    assert min(p.distance for p in report.duplicates) == 0  # the exact copy
    issue = report.issue("near_duplicate")
    assert issue.severity == WARNING and "Keep one" in issue.message
    assert all("near-identical to" in f.detail for f in issue.files)


@pytest.mark.parametrize("d_bits, p_bits, paired", [(0, 0, True), (10, 14, True), (11, 0, False), (0, 15, False)])
def test_near_duplicate_thresholds(d_bits, p_bits, paired):
    other = ImageHash(dhash=(1 << d_bits) - 1, phash=(1 << p_bits) - 1)
    assert near_duplicate_pairs([ImageHash(0, 0), other]) == ([(0, 1, d_bits)] if paired else [])
    assert DHASH_THRESHOLD == 10 and PHASH_THRESHOLD == 14


# ----------------------------------------------------------------------------- captions


def test_caption_checks(tmp_path):
    folder = tmp_path / "ds"
    for seed, name in enumerate("abcdefghi"):
        save(blobs(seed), folder / f"{name}.png")
    (folder / "b.txt").write_text("  \n")
    (folder / "c.txt").write_text("a dog on the grass")
    (folder / "d.txt").write_text("sks, " + ", ".join(f"detail number {i} of the scene" for i in range(20)))
    (folder / "e.txt").write_bytes("sks, café crème".encode("latin-1"))
    (folder / "f.caption").write_bytes("sks, photo".encode("utf-16"))
    (folder / "g.txt").write_text("SKS, a dog")  # CLIP lower-cases: the trigger is there
    (folder / "h.txt").write_text("sksdog on grass")  # part of a word only
    (folder / "i.txt").write_bytes("sks, photo".encode("utf-16-le"))  # Notepad's BOM-less UTF-16: NULs

    report = check(folder, resolution=64, trigger=TRIGGER)  # approximate token counts

    assert paths_of(report, "missing_caption") == {"a.png"}
    assert paths_of(report, "empty_caption") == {"b.png"}
    assert paths_of(report, "trigger_missing") == {"a.png", "b.png", "c.png", "h.png"}
    assert paths_of(report, "caption_too_long") == {"d.png"}
    assert paths_of(report, "caption_not_utf8") == {"e.png", "f.png", "i.png"}
    tokens = int(report.issue("caption_too_long").files[0].detail.split()[0])
    assert tokens == approximate_token_count((folder / "d.txt").read_text()) > CLIP_WINDOW
    details = {f.path.name: f.detail for f in report.issue("caption_not_utf8").files}
    assert "Windows-1252" in details["e.png"] and "UTF-16" in details["f.png"] and "UTF-16" in details["i.png"]
    assert all(report.issue(code).severity == WARNING for code in
               ("missing_caption", "empty_caption", "trigger_missing", "caption_too_long", "caption_not_utf8"))
    assert report.ok
    assert paths_of(check(folder, resolution=64), "trigger_missing") == set()  # no trigger given: no check


def test_folder_name_caption_and_class_images(tmp_path):
    root = tmp_path / "project"
    save(blobs(1), root / "img" / "10_sks dog" / "x.png")
    save(blobs(2), root / "img" / "10_sks dog" / "y.png")
    (root / "img" / "10_sks dog" / "y.txt").write_text("a dog running")
    save(blobs(3), root / "reg" / "1_dog" / "r.png")
    (root / "reg" / "1_dog" / "r.txt").write_text("a dog")
    save(blobs(4), root / "reg" / "1_dog" / "s.png")  # no caption: "dog" from the folder, as intended

    report = check(root, resolution=64, trigger=TRIGGER)

    assert (report.num_train_images, report.num_reg_images) == (2, 2)
    missing = report.issue("missing_caption")
    assert [f.path.name for f in missing.files] == ["x.png"] and "'sks dog'" in missing.files[0].detail
    assert paths_of(report, "trigger_missing") == {"y.png"}  # x has it from the folder name; r is a class image


def test_token_counters(monkeypatch, tmp_path, clip_counter):
    captions = ["a photo of a cat sitting on a wooden chair, soft light",
                "sks, woman, red dress, long hair, standing in a field of flowers, sunset",
                "close-up portrait of an old fisherman with a grey beard"]
    for caption in captions:  # the fallback stays near the real count for ordinary English
        assert abs(approximate_token_count(caption) - clip_counter(caption)) <= 0.25 * clip_counter(caption)
    long_caption = "sks, " + ", ".join(f"detail number {i} of the scene" for i in range(20))
    folder = tmp_path / "ds"
    save(blobs(1), folder / "long.png")
    (folder / "long.txt").write_text(long_caption)
    save(blobs(2), folder / "short.png")
    (folder / "short.txt").write_text(captions[0])
    report = check_dataset(folder, resolution=64, count_tokens=clip_counter)
    assert report.token_counter == "custom"
    assert [(f.path.name, f.detail) for f in report.issue("caption_too_long").files] == [
        ("long.png", f"{clip_counter(long_caption)} tokens")]

    clip_tokenizer.load_clip_tokenizer.cache_clear()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default cache goes under a temp home
    counter, name = clip_token_counter()
    assert name == "clip" and counter(captions[1]) == clip_counter(captions[1])

    def no_vocabulary():
        raise CheckpointError("no vocabulary")

    clip_tokenizer.load_clip_tokenizer.cache_clear()
    monkeypatch.setenv("HOME", str(tmp_path / "home2"))
    monkeypatch.setattr(clip_tokenizer, "find_bpe_file", no_vocabulary)
    counter, name = clip_token_counter()
    assert name == "approximate" and counter is approximate_token_count
    clip_tokenizer.load_clip_tokenizer.cache_clear()


# ----------------------------------------------------------------------------- report, errors, CLI


def test_report_as_json_and_text(tmp_path):
    folder = tmp_path / "ds"
    save(blobs(1, (40, 40)), folder / "small.png")
    (folder / "bad.png").write_text("nope")
    report = check(folder, resolution=64, trigger=TRIGGER)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["num_images"] == 2 and data["token_counter"] == "approximate"
    codes = {issue["code"]: issue for issue in data["issues"]}
    assert set(codes) == {"broken", "too_small", "missing_caption", "trigger_missing"}
    assert codes["broken"]["files"][0]["path"] == str(folder / "bad.png")
    assert [issue["severity"] for issue in data["issues"]][0] == ERROR  # errors first
    text = report.format_text()
    assert all(f"[{code}]" in text for code in codes) and str(folder / "bad.png") in text


def test_unusable_folders_raise_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="No images found"):
        check(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        check(tmp_path / "missing")


def test_cli_dataset_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = write_photos(tmp_path / "ds", names=("chelsea", "coffee"), size=64,
                          captions={"chelsea": "sks, a cat", "coffee": "a cup"})
    assert cli_main(["dataset", "check", str(folder), "--resolution", "64", "--trigger", TRIGGER]) == 0
    out = capsys.readouterr().out
    assert "[trigger_missing]" in out and str(folder / "coffee.png") in out
    (folder / "broken.png").write_text("not a png")
    assert cli_main(["dataset", "check", str(folder), "--resolution", "64", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["issues"][0]["code"] == "broken"
    assert cli_main(["dataset", "check", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_tokenizer_that_maps_every_word_to_one_id_is_not_trusted(monkeypatch):
    from lib_training.data import health

    class Broken:  # what transformers 5 builds from arguments it does not know
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [2] * len(text.split())}

    monkeypatch.setattr(clip_tokenizer, "load_clip_tokenizer", lambda *a: Broken())
    assert health.clip_token_counter()[1] == "approximate"

    class Working(Broken):
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [hash(w) % 1000 for w in text.split()]}

    monkeypatch.setattr(clip_tokenizer, "load_clip_tokenizer", lambda *a: Working())
    counter, name = health.clip_token_counter()
    assert name == "clip" and counter("one two three") == 3
