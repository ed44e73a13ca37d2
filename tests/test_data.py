"""Data layer: kohya folder layout, captions, strict image decoding, buckets, caption augmentation."""

from __future__ import annotations

import math
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

try:
    from skimage import data as skdata
except ImportError:  # the "current" environment has no scikit-image: synthetic stand-ins below
    skdata = None

from lib_training.data import images as images_mod
from lib_training.data.buckets import assign_bucket, make_buckets
from lib_training.data.captions import cap_caption, process_caption, split_tags
from lib_training.data.folders import (
    decode_text,
    parse_subset_name,
    read_caption_file,
    scan_dataset,
    tag_frequency,
)
from lib_training.data.images import load_rgb, read_size, resize_and_crop, to_rgb, to_tensor
from lib_training.errors import DatasetError, SettingsError

# ----------------------------------------------------------------------------- helpers


_PHOTO_SHAPES = {"astronaut": (512, 512), "chelsea": (300, 451), "coffee": (400, 600)}


def _photo(name: str) -> np.ndarray:
    """scikit-image's sample photo, or a textured stand-in of the same shape without scikit-image."""
    if skdata is not None:
        return getattr(skdata, name)()
    h, w = _PHOTO_SHAPES[name]
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(len(name)).integers(0, 40, (h, w, 3))
    base = np.stack([xx * 215 // w, yy * 215 // h, (xx + yy) * 215 // (w + h)], axis=-1)
    return (base + noise).astype(np.uint8)


def _small(array: np.ndarray, size: int = 64) -> Image.Image:
    """A real photo, shrunk so tests stay fast."""
    img = Image.fromarray(array)
    return img.resize((size, max(1, round(size * img.height / img.width))))


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A valid small PNG whose IHDR is patched to claim width x height (CRC fixed up)."""
    _save(Image.new("RGB", (8, 8), "red"), path)
    raw = bytearray(path.read_bytes())
    # Signature (8) + length (4) + b"IHDR" (4), then width/height, 5 more fields, CRC.
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture()
def photos() -> dict[str, Image.Image]:
    return {
        "astronaut": _small(_photo("astronaut")),
        "chelsea": _small(_photo("chelsea")),
        "coffee": _small(_photo("coffee")),
    }


# ----------------------------------------------------------------------------- folders


def test_scan_kohya_layout_with_repeats_reg_and_caption_fallback(tmp_path, photos):
    subset = tmp_path / "train" / "10_nosnjaoutfit woman"
    _save(photos["astronaut"], subset / "a.png")
    _write(subset / "a.txt", "nosnjaoutfit woman, red dress, smiling\n")
    _save(photos["chelsea"], subset / "b.jpg")  # no caption: folder tokens
    _save(photos["coffee"], subset / "c.webp")
    _write(subset / "c.txt", "  \n")  # empty caption: folder tokens
    other = tmp_path / "train" / "2_cat_photo"
    _save(photos["chelsea"], other / "x.bmp")
    _write(other / "x.caption", "a cat")
    _save(photos["coffee"], tmp_path / "reg" / "1_woman" / "r2.png")
    _save(photos["astronaut"], tmp_path / "reg" / "1_woman" / "r1.png")

    spec = scan_dataset(tmp_path / "train", tmp_path / "reg")

    assert [s.path.name for s in spec.subsets] == ["10_nosnjaoutfit woman", "2_cat_photo", "1_woman"]
    assert [(s.repeats, s.tokens, s.is_reg) for s in spec.subsets] == [
        (10, "nosnjaoutfit woman", False),
        (2, "cat_photo", False),  # underscores after the first belong to the tokens
        (1, "woman", True),
    ]
    train = spec.train_items
    assert [i.path.name for i in train] == ["a.png", "b.jpg", "c.webp", "x.bmp"]
    assert [i.caption for i in train] == [
        "nosnjaoutfit woman, red dress, smiling",
        "nosnjaoutfit woman",
        "nosnjaoutfit woman",
        "a cat",
    ]
    assert train[0].subset == "10_nosnjaoutfit woman" and train[0].repeats == 10
    assert [i.path.name for i in spec.reg_items] == ["r1.png", "r2.png"]  # sorted, not creation order
    assert all(i.is_reg and i.caption == "woman" for i in spec.reg_items)
    assert spec.num_train_images == 4 and spec.num_reg_images == 2
    assert spec.num_train_samples == 3 * 10 + 2
    assert spec.num_reg_samples == 2


def test_caption_extension_order_and_case(tmp_path, photos):
    folder = tmp_path / "1_x"
    _save(photos["chelsea"], folder / "img.PNG")
    _write(folder / "img.txt", "from txt")
    _write(folder / "img.caption", "from caption")
    _save(photos["coffee"], folder / "up.JPG")
    _write(folder / "up.TXT", "upper-case extension")

    default = scan_dataset(tmp_path)
    assert [i.caption for i in default.train_items] == ["from txt", "upper-case extension"]
    swapped = scan_dataset(tmp_path, caption_extensions=("caption", ".txt"))  # dot optional
    assert swapped.train_items[0].caption == "from caption"


def test_plain_folder_of_images_is_one_subset(tmp_path, photos):
    _save(photos["astronaut"], tmp_path / "a.png")
    _write(tmp_path / "a.txt", "an astronaut")
    _save(photos["chelsea"], tmp_path / "b.jpeg")
    _write(tmp_path / "._a.png", b"\x00\x05\x16\x07 macOS resource fork")  # skipped, not an image
    _write(tmp_path / "notes.md", "not an image")
    (tmp_path / "logs").mkdir()  # folders without images are ignored

    spec = scan_dataset(tmp_path)

    (subset,) = spec.subsets
    assert (subset.repeats, subset.tokens, subset.is_reg) == (1, "", False)
    assert [(i.path.name, i.caption) for i in spec.train_items] == [("a.png", "an astronaut"), ("b.jpeg", "")]
    assert spec.num_train_samples == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("café naïve, ½ smile".encode("cp1252"), "café naïve, ½ smile"),
        ("猫, かわいい, café".encode("utf-16"), "猫, かわいい, café"),  # with BOM
        (b"\xfe\xff" + "猫, café".encode("utf-16-be"), "猫, café"),  # big-endian BOM
        ("red dress, smile".encode("utf-16-le"), "red dress, smile"),  # no BOM (Notepad "Unicode")
        (b"\xef\xbb\xbf" + "smile, 猫".encode("utf-8"), "smile, 猫"),  # UTF-8 BOM stripped
        ("plain ascii".encode("utf-8"), "plain ascii"),
        (b"\x81\x8d odd bytes", "\x81\x8d odd bytes"),  # undefined in cp1252: latin-1
    ],
)
def test_caption_encodings(tmp_path, raw, expected):
    path = _write(tmp_path / "c.txt", raw)
    assert read_caption_file(path) == expected


def test_caption_uses_first_non_empty_line_and_decoding_never_fails(tmp_path):
    path = _write(tmp_path / "c.txt", "\r\n\r\nfirst line, tags\r\nsecond line\r\n")
    assert read_caption_file(path) == "first line, tags"
    rng = random.Random(0)
    for _ in range(300):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        assert isinstance(decode_text(blob), str)
    assert isinstance(decode_text(b"\xff\xfe\x00"), str)  # odd-length "UTF-16" with a BOM


def test_tag_frequency_counts_tags_per_subset(tmp_path, photos):
    folder = tmp_path / "train" / "5_nosnja"
    for name, caption in (("a", "nosnja, Red Dress, smile"), ("b", "nosnja, red dress"), ("c", "")):
        _save(photos["chelsea"], folder / f"{name}.png")
        _write(folder / f"{name}.txt", caption)
    spec = scan_dataset(tmp_path / "train")
    # "c" has an empty caption, so it trains on (and counts) the folder tokens.
    assert tag_frequency(spec) == {"5_nosnja": {"nosnja": 3, "red dress": 2, "smile": 1}}


def test_parse_subset_name():
    assert parse_subset_name("10_nosnjaoutfit woman") == (10, "nosnjaoutfit woman")
    assert parse_subset_name("3_") == (3, "")
    assert parse_subset_name("abc_x") is None
    assert parse_subset_name("10") is None


def test_missing_folders(tmp_path, photos):
    with pytest.raises(DatasetError, match="does not exist") as err:
        scan_dataset(tmp_path / "nope")
    assert "nope" in str(err.value)
    _save(photos["chelsea"], tmp_path / "train" / "1_x" / "a.png")
    with pytest.raises(DatasetError, match="regularisation folder .*reg.* does not exist"):
        scan_dataset(tmp_path / "train", tmp_path / "reg")
    with pytest.raises(DatasetError, match="is a file"):
        scan_dataset(tmp_path / "train" / "1_x" / "a.png")


def test_empty_folder_names_folders_and_layout(tmp_path):
    (tmp_path / "10_mychar").mkdir()
    _write(tmp_path / "10_mychar" / "a.txt", "caption without image")
    with pytest.raises(DatasetError) as err:
        scan_dataset(tmp_path)
    message = str(err.value)
    assert "No images" in message
    assert str(tmp_path) in message and "10_mychar" in message  # where it looked
    assert "<repeats>_<name>" in message  # what it expected


@pytest.mark.parametrize(
    ("folder", "fragments"),
    [
        ("abc_x", ["repeat count", "'abc' is not a whole number", "10_abc_x", "left out", "kohya"]),
        ("woman", ["repeat count", "10_woman"]),
        ("0_woman", ["0 repeats", "1_woman"]),
        ("-1_woman", ["negative repeat count", "'1_woman'"]),
    ],
)
def test_bad_subset_names_are_skipped_and_reported_as_kohya_does(tmp_path, photos, folder, fragments):
    _save(photos["chelsea"], tmp_path / "train" / folder / "a.png")
    _save(photos["coffee"], tmp_path / "train" / "10_ok" / "a.png")
    spec = scan_dataset(tmp_path / "train")
    assert [s.name for s in spec.subsets] == ["10_ok"]
    (skipped,) = spec.skipped
    assert skipped.code == "folder_name" and skipped.path.name == folder
    for fragment in fragments:
        assert fragment in skipped.reason


def test_only_badly_named_folders_give_an_empty_dataset_with_the_reasons(tmp_path, photos):
    for folder in ("0_a", "-1_b", "c"):
        _save(photos["chelsea"], tmp_path / folder / "a.png")
    spec = scan_dataset(tmp_path)
    assert spec.num_train_images == 0 and [s.path.name for s in spec.skipped] == ["-1_b", "0_a", "c"]


def test_loose_images_next_to_subsets_are_left_out_and_reported(tmp_path, photos):
    _save(photos["chelsea"], tmp_path / "stray.png")
    _save(photos["coffee"], tmp_path / "10_ok" / "a.png")
    spec = scan_dataset(tmp_path)
    assert [i.path.name for i in spec.train_items] == ["a.png"]
    assert [(e.code, e.path.name) for e in spec.skipped] == [("loose_image", "stray.png")]
    assert "move it into" in spec.skipped[0].reason


def test_a_kohya_project_folder_is_read_as_its_img_and_reg(tmp_path, photos):
    _save(photos["chelsea"], tmp_path / "img" / "2_sks cat" / "a.png")
    _save(photos["coffee"], tmp_path / "reg" / "1_cat" / "b.png")
    spec = scan_dataset(tmp_path)
    assert [(s.name, s.is_reg) for s in spec.subsets] == [("2_sks cat", False), ("1_cat", True)]


def test_links_leaving_the_dataset_are_never_followed(tmp_path, photos):
    outside = _save(photos["chelsea"], tmp_path / "private" / "secret.png")
    (tmp_path / "private" / "secret.txt").write_text("private words", encoding="utf-8")
    data = tmp_path / "data" / "5_x"
    _save(photos["coffee"], data / "ok.png")
    (data / "link.png").symlink_to(outside)
    (data / "ok.txt").symlink_to(tmp_path / "private" / "secret.txt")
    (data / "loop.png").symlink_to(data / "loop.png")
    (tmp_path / "data" / "5_dir").symlink_to(tmp_path / "private", target_is_directory=True)
    inside = data / "inside.png"
    inside.symlink_to(data / "ok.png")  # a link that stays inside is fine
    spec = scan_dataset(tmp_path / "data")
    assert sorted(i.path.name for i in spec.train_items) == ["inside.png", "ok.png"]
    assert all(i.caption == "x" for i in spec.train_items)  # the outside caption was not read
    codes = {e.path.name: e.code for e in spec.skipped}
    assert codes == {"5_dir": "outside_dataset", "link.png": "outside_dataset", "ok.txt": "outside_dataset",
                     "loop.png": "broken_link"}


# ----------------------------------------------------------------------------- images: good files


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".bmp"])
def test_load_real_photos(tmp_path, photos, ext):
    for name, img in photos.items():
        path = _save(img, tmp_path / f"{name}{ext}")
        loaded = load_rgb(path)
        assert loaded.mode == "RGB" and loaded.size == img.size
        diff = np.abs(np.asarray(loaded, dtype=int) - np.asarray(img, dtype=int)).mean()
        assert diff == 0 if ext in (".png", ".bmp") else diff < 12  # lossy formats stay close


def test_grayscale_and_bilevel_become_rgb(tmp_path, photos):
    grey = photos["astronaut"].convert("L")
    loaded = np.asarray(load_rgb(_save(grey, tmp_path / "g.png")))
    assert loaded.shape[2] == 3
    assert (loaded[..., 0] == np.asarray(grey)).all() and (loaded[..., 0] == loaded[..., 2]).all()
    bilevel = load_rgb(_save(grey.convert("1"), tmp_path / "b.png"))
    assert set(np.unique(np.asarray(bilevel))) <= {0, 255}


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # white
    cmyk.paste((255, 0, 0, 0), (0, 0, 16, 16))  # cyan on the left
    loaded = np.asarray(load_rgb(_save(cmyk, tmp_path / "cmyk.jpg", quality=95)), dtype=int)
    assert np.abs(loaded[8, 4] - [0, 255, 255]).max() < 12
    assert np.abs(loaded[8, 28] - [255, 255, 255]).max() < 12


def test_alpha_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (0, 0, 255, 255), (255, 0, 0, 128)])  # transparent black, blue, half red
    loaded = np.asarray(load_rgb(_save(rgba, tmp_path / "a.png")), dtype=int)
    assert loaded[0, 0].tolist() == [255, 255, 255]
    assert loaded[0, 1].tolist() == [0, 0, 255]
    assert np.abs(loaded[0, 2] - [255, 127, 127]).max() <= 1

    la = Image.new("LA", (1, 1), (0, 0))  # transparent black grey+alpha
    assert load_rgb(_save(la, tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putdata([0, 1])
    pal.info["transparency"] = 0  # palette index 0 (black) is transparent
    loaded = load_rgb(_save(pal, tmp_path / "p.png", transparency=0))
    assert [loaded.getpixel((x, 0)) for x in (0, 1)] == [(255, 255, 255), (255, 0, 0)]


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    loaded = np.asarray(load_rgb(_save(Image.fromarray(values), tmp_path / "g16.png")))
    assert loaded[0, :, 0].tolist() == [0, 100, 255]
    assert (loaded[..., 0] == loaded[..., 1]).all()
    # A dark 16-bit image (all values < 256) must stay dark: the file, not the values, says 16-bit.
    dark = np.array([[0, 200, 255]], dtype=np.uint16)
    loaded = np.asarray(load_rgb(_save(Image.fromarray(dark), tmp_path / "dark16.png")))
    assert loaded[0, :, 0].tolist() == [0, 1, 1]


def test_to_rgb_high_depth_modes_in_memory():
    i16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert i16.mode == "I;16"
    assert to_rgb(i16).getpixel((1, 0)) == (255, 255, 255)
    int32 = Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32), mode="I")
    assert [to_rgb(int32).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32), mode="F")
    assert [to_rgb(floats).getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 0]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 40), "blue")
    img.paste((255, 0, 0), (0, 0, 30, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)

    loaded = load_rgb(path)
    assert loaded.size == (40, 60)
    assert read_size(path) == (40, 60)
    top, bottom = loaded.getpixel((20, 5)), loaded.getpixel((20, 55))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


# ----------------------------------------------------------------------------- images: bad files


def test_text_file_named_png(tmp_path):
    path = _write(tmp_path / "notes.png", "this is not an image\n")
    with pytest.raises(DatasetError, match="notes.png.*not an image"):
        load_rgb(path)


def test_empty_file(tmp_path):
    path = _write(tmp_path / "empty.jpg", b"")
    with pytest.raises(DatasetError, match="empty.jpg.*empty file"):
        load_rgb(path)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="gone.png.*does not exist"):
        load_rgb(tmp_path / "gone.png")


def test_truncated_jpeg(tmp_path, photos):
    path = _save(photos["astronaut"], tmp_path / "t.jpg", quality=95)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="t.jpg.*truncated or corrupt"):
        load_rgb(path)


def test_corrupt_png_data(tmp_path, photos):
    path = _save(photos["coffee"], tmp_path / "c.png")
    raw = bytearray(path.read_bytes())
    start = raw.index(b"IDAT") + 4
    raw[start + 2 : start + 200] = bytes(198)  # zero out compressed pixel data
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="c.png"):
        load_rgb(path)
    garbage = _write(tmp_path / "g.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(DatasetError, match="g.png"):
        load_rgb(garbage)


def test_decompression_bomb_header(tmp_path):
    path = _png_with_size(tmp_path / "bomb.png", 100_000, 100_000)  # 10 gigapixels claimed in 100 bytes
    with pytest.raises(DatasetError, match="bomb.png.*too large"):
        load_rgb(path)
    with pytest.raises(DatasetError, match="bomb.png.*too large"):
        read_size(path)  # caught at scan time too, from the header alone


def test_image_over_our_pixel_limit(tmp_path, photos, monkeypatch):
    path = _save(photos["astronaut"], tmp_path / "big.png")  # 64x64 = 4096 pixels
    monkeypatch.setattr(images_mod, "MAX_IMAGE_PIXELS", 4000)
    with pytest.raises(DatasetError, match="big.png.*too large.*64x64"):
        load_rgb(path)
    with pytest.raises(DatasetError, match="big.png.*too large"):
        read_size(path)


def test_pillow_bomb_warning_is_an_error(tmp_path, photos, monkeypatch):
    path = _save(photos["astronaut"], tmp_path / "warn.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # Pillow warns above 3000, errors above 6000
    with pytest.raises(DatasetError, match="warn.png.*too large"):
        load_rgb(path)


# ----------------------------------------------------------------------------- resize / tensor


def test_resize_and_crop_covers_and_centres():
    img = Image.new("RGB", (200, 100), "blue")
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left half red
    out = resize_and_crop(img, 64, 64)
    assert out.size == (64, 64)
    assert out.getpixel((5, 32))[0] > 200 and out.getpixel((58, 32))[2] > 200  # centre crop: half/half

    tall = resize_and_crop(Image.new("RGB", (30, 90), (0, 255, 0)), 128, 96)  # upscales to cover
    assert tall.size == (128, 96)
    assert np.asarray(tall)[..., 1].min() > 250


def test_resize_and_crop_on_real_photo_matches_resize_then_crop(photos):
    img = Image.fromarray(_photo("chelsea"))  # 451x300
    out = np.asarray(resize_and_crop(img, 128, 128), dtype=float)
    scale = 128 / 300
    big = img.resize((round(451 * scale), 128), Image.Resampling.LANCZOS)
    left = (big.width - 128) // 2
    ref = np.asarray(big.crop((left, 0, left + 128, 128)), dtype=float)
    assert np.abs(out - ref).mean() < 4


def test_random_crop_is_seeded_and_validated():
    img = Image.fromarray(_photo("coffee"))
    a = resize_and_crop(img, 96, 96, crop="random", rng=random.Random(3))
    b = resize_and_crop(img, 96, 96, crop="random", rng=random.Random(3))
    assert a.size == (96, 96) and a.tobytes() == b.tobytes()
    with pytest.raises(SettingsError):
        resize_and_crop(img, 96, 96, crop="random")
    with pytest.raises(SettingsError):
        resize_and_crop(img, 96, 96, crop="diagonal")


def test_to_tensor_range_and_layout():
    img = Image.new("RGB", (3, 2), (0, 0, 0))
    img.putpixel((2, 1), (255, 128, 0))
    t = to_tensor(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t.min() == -1.0 and t.max() == 1.0
    assert t[:, 1, 2].tolist() == pytest.approx([1.0, 128 / 127.5 - 1, -1.0], abs=1e-6)
    assert to_tensor(Image.new("L", (2, 2), 255)).shape == (3, 2, 2)


# ----------------------------------------------------------------------------- buckets


@pytest.mark.parametrize(("resolution", "step"), [(512, 64), (768, 64), (1024, 64), (64, 8), (128, 16)])
def test_bucket_properties(resolution, step):
    buckets = make_buckets(resolution, step=step)
    assert buckets == sorted(set(buckets))
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert w % step == 0 and h % step == 0
        assert w * h <= resolution**2
        assert (h, w) in buckets
    assert len(buckets) > 3  # tiny resolutions get shapes too


def test_buckets_for_512_match_kohya():
    buckets = make_buckets(512)
    for expected in [(512, 512), (576, 448), (448, 576), (640, 384), (384, 640), (256, 1024), (1024, 256)]:
        assert expected in buckets
    assert min(min(b) for b in buckets) >= 256 and max(max(b) for b in buckets) <= 1024


def test_tiny_resolution_with_default_step_and_disabled_bucketing():
    assert make_buckets(64) == [(64, 64)]
    assert make_buckets(512, enabled=False) == [(512, 512)]
    assert assign_bucket(300, 900, make_buckets(512, enabled=False)) == (512, 512)


def test_invalid_bucket_settings():
    with pytest.raises(SettingsError, match="multiple of 8"):
        make_buckets(512, step=12)
    with pytest.raises(SettingsError, match="not a multiple of the bucket step"):
        make_buckets(500)


def test_assign_bucket_follows_aspect_ratio():
    buckets = make_buckets(512)
    portrait = assign_bucket(300, 451, buckets)  # chelsea, turned
    assert portrait[1] > portrait[0]
    assert assign_bucket(451, 300, buckets) == (portrait[1], portrait[0])
    assert assign_bucket(1000, 1000, buckets) == (512, 512)
    assert assign_bucket(1920, 1080, buckets) == (640, 384)
    assert assign_bucket(100, 10_000, buckets) == (256, 1024)  # extreme shapes get the extreme bucket
    # Nearest in log-ratio: 2:3 is as far from 1:1 as 3:2 is, so picks are symmetric.
    target = math.log(300 / 451)
    best = min(abs(math.log(w / h) - target) for w, h in buckets)
    assert abs(math.log(portrait[0] / portrait[1]) - target) == pytest.approx(best)


def test_assign_bucket_ties_prefer_larger_area():
    assert assign_bucket(10, 10, [(256, 256), (512, 512), (384, 384)]) == (512, 512)
    with pytest.raises(ValueError):
        assign_bucket(0, 10, [(64, 64)])


# ----------------------------------------------------------------------------- captions

CAPTION = "nosnja, woman, red dress, smiling, outdoors, sunny, park"


def test_keep_tokens_stay_in_front_while_rest_is_shuffled():
    tags = split_tags(CAPTION)
    seen = set()
    for seed in range(30):
        out = process_caption(CAPTION, random.Random(seed), shuffle=True, keep_tokens=2, dropout_rate=0.0)
        parts = out.split(", ")
        assert parts[:2] == ["nosnja", "woman"]
        assert sorted(parts) == sorted(tags)
        seen.add(out)
    assert len(seen) > 5  # it really shuffles


def test_shuffle_is_deterministic_with_seeded_rng():
    first = process_caption(CAPTION, random.Random(42), shuffle=True, keep_tokens=1, dropout_rate=0.0)
    again = process_caption(CAPTION, random.Random(42), shuffle=True, keep_tokens=1, dropout_rate=0.0)
    assert first == again
    state = random.getstate()
    process_caption(CAPTION, random.Random(1), shuffle=True, keep_tokens=0, dropout_rate=0.5, tag_dropout_rate=0.3)
    assert random.getstate() == state  # the global RNG (shared with the WebUI) is untouched


def test_caption_dropout_and_tag_dropout():
    rng = random.Random(0)
    assert process_caption(CAPTION, rng, shuffle=True, keep_tokens=1, dropout_rate=1.0) == ""
    assert process_caption(CAPTION, rng, shuffle=False, keep_tokens=2, dropout_rate=0.0, tag_dropout_rate=1.0) == (
        "nosnja, woman"
    )
    kept = [
        process_caption(CAPTION, random.Random(s), shuffle=False, keep_tokens=0, dropout_rate=0.0, tag_dropout_rate=0.5)
        for s in range(200)
    ]
    mean_tags = np.mean([len(split_tags(k)) for k in kept])
    assert 2.5 < mean_tags < 4.5  # about half of 7 tags survive
    dropped = sum(process_caption(CAPTION, random.Random(s), False, 0, 0.25) == "" for s in range(400))
    assert 60 < dropped < 140


def test_caption_without_augmentation_is_unchanged():
    sentence = "  a photo of nosnja,smiling in a park  "
    assert process_caption(sentence, random.Random(0), shuffle=False, keep_tokens=3, dropout_rate=0.0) == (
        "a photo of nosnja,smiling in a park"
    )
    out = process_caption("a,, b ,c", random.Random(0), shuffle=True, keep_tokens=0, dropout_rate=0.0)
    assert sorted(out.split(", ")) == ["a", "b", "c"]  # empty tags disappear
    assert process_caption("a|b|c", random.Random(0), True, 1, 0.0, separator="|").startswith("a, ")


def test_caption_settings_are_validated():
    with pytest.raises(SettingsError):
        process_caption(CAPTION, random.Random(0), True, -1, 0.0)
    with pytest.raises(SettingsError):
        process_caption(CAPTION, random.Random(0), True, 0, 1.5)
    with pytest.raises(SettingsError):
        process_caption(CAPTION, random.Random(0), True, 0, 0.0, tag_dropout_rate=-0.1)


def test_cap_caption_keeps_the_longest_run_of_whole_leading_tags_within_the_limit():
    words = lambda text: len(text.split())  # noqa: E731 - a token counter: one token per word
    tags = ", ".join(f"tag number {i}" for i in range(3000))  # 9,000 "tokens", as scraped booru captions come
    capped = cap_caption(tags, words, 225)
    assert capped == ", ".join(f"tag number {i}" for i in range(75))  # 75 whole tags = 225 tokens
    assert cap_caption("short, caption", words, 225) == "short, caption"  # within the limit: unchanged
    one_long_tag = " ".join(["word"] * 300)  # no separator: cut between words
    assert cap_caption(one_long_tag, words, 225) == " ".join(["word"] * 225)
    chars = lambda text: len(text)  # noqa: E731 - no tag or word fits: cut between characters
    assert cap_caption("abcdefghij, klm", chars, 4) == "abcd"
