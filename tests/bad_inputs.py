"""A corpus of the awkward and broken input people's photo folders hold, mixed with good photos.

`build_corpus(base)` writes a kohya project (`base/project/img/...`, `base/project/reg/...`) and, beside
it, `base/outside/` that links in the project point at (it must never be read). Every kind says how
the engine handles it (the README's reliability table is this list):

  trained    kept as it is
  converted  kept, turned into 8-bit upright RGB on load (mode, depth, alpha, EXIF rotation, encoding)
  left out   not trained on, listed once by the pre-flight (and the health check)
  ignored    not a training file at all (hidden files, system files, nested folders), silently

Good photos are scikit-image's sample images, small so the tests stay fast.
"""

from __future__ import annotations

import codecs
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

TRAINED, CONVERTED, LEFT_OUT, IGNORED = "trained", "converted", "left out", "ignored"
SUBSET = "10_sks cat"
PHOTO_SIDE = 80


@dataclass(frozen=True)
class Kind:
    name: str
    handling: str  # TRAINED, CONVERTED, LEFT_OUT or IGNORED
    how: str  # what happens to it, for the README
    paths: tuple  # the files/folders of this kind; the ones the pre-flight lists for LEFT_OUT
    images: tuple = ()  # the training images this kind contributes (TRAINED / CONVERTED)


@dataclass
class Corpus:
    project: Path
    outside: Path
    kinds: list = field(default_factory=list)

    def of(self, handling: str) -> list[Kind]:
        return [k for k in self.kinds if k.handling == handling]

    @property
    def expected_left_out(self) -> set[Path]:
        return {Path(p) for k in self.of(LEFT_OUT) for p in k.paths}

    @property
    def expected_train_images(self) -> set[Path]:
        return {Path(p) for k in self.kinds if not _is_reg(k) for p in k.images}

    @property
    def expected_class_images(self) -> set[Path]:
        return {Path(p) for k in self.kinds if _is_reg(k) for p in k.images}


def _is_reg(kind: Kind) -> bool:
    return kind.name.startswith("class images")


def photo(name: str = "chelsea", side: int = PHOTO_SIDE) -> Image.Image:
    from skimage import data

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    image.thumbnail((side, side))
    return image


def build_corpus(base: Path) -> Corpus:
    """Write the corpus under `base`; returns where each kind is and how it must be handled."""
    corpus = Corpus(base / "project", base / "outside")
    img = corpus.project / "img"
    subset = img / SUBSET
    subset.mkdir(parents=True)
    corpus.outside.mkdir(parents=True)
    add = corpus.kinds.append
    for maker in _MAKERS:
        add(maker(subset, corpus))
    return corpus


# ---- good input --------------------------------------------------------------------------------

def _good_photos(subset: Path, corpus: Corpus) -> Kind:
    paths = []
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        path = subset / f"{name}.png"
        photo(name).save(path)
        (subset / f"{name}.txt").write_text(f"sks cat, {name}", encoding="utf-8")
        paths.append(path)
    return Kind("good photos (PNG + .txt caption)", TRAINED, "trained", tuple(paths), tuple(paths))


def _class_images(subset: Path, corpus: Corpus) -> Kind:
    folder = corpus.project / "reg" / "1_cat"
    folder.mkdir(parents=True)
    paths = []
    for name in ("chelsea", "coffee"):
        path = folder / f"{name}.jpg"
        photo(name).save(path, quality=90)
        paths.append(path)
    return Kind("class images (reg/1_cat, captioned by the folder name)", TRAINED, "trained as class images",
                tuple(paths), tuple(paths))


# ---- broken files ------------------------------------------------------------------------------

def _left_out(name: str, how: str, path: Path) -> Kind:
    return Kind(name, LEFT_OUT, how, (path,))


def _truncated_jpeg(subset: Path, corpus: Corpus) -> Kind:
    buffer = io.BytesIO()
    photo("astronaut").save(buffer, format="JPEG", quality=95)
    path = subset / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    return _left_out("truncated JPEG (interrupted download)", "left out: cannot be decoded", path)


def _corrupt_png(subset: Path, corpus: Corpus) -> Kind:
    buffer = io.BytesIO()
    photo("rocket").save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") + 40
    data[start:start + 64] = bytes(b ^ 0x5A for b in data[start:start + 64])  # garbage compressed pixels
    path = subset / "corrupt.png"
    path.write_bytes(bytes(data))
    return _left_out("PNG with corrupt pixel data", "left out: cannot be decoded", path)


def _empty_file(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "empty.png"
    path.write_bytes(b"")
    return _left_out("empty file (0 bytes)", "left out: empty file", path)


def _text_as_png(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "notes.png"
    path.write_text("this is a text file with an image extension\n", encoding="utf-8")
    return _left_out("text file named .png", "left out: not an image", path)


def _html_as_jpg(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "download.jpg"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>", encoding="utf-8")
    return _left_out("HTML error page saved as .jpg", "left out: not an image (an HTML page)", path)


def _random_bytes(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "garbage.webp"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return _left_out("random bytes named .webp", "left out: not an image", path)


def _png_signature_only(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "header_only.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    return _left_out("PNG signature and nothing else", "left out: cannot be decoded", path)


def _decompression_bomb(subset: Path, corpus: Corpus) -> Kind:
    """A 200-byte PNG claiming 40000x40000 pixels (1.6 G pixels)."""
    path = subset / "bomb.png"
    path.write_bytes(_png_bytes(40000, 40000, zlib.compress(b"\x00" * 64)))
    return _left_out("decompression bomb (tiny file, 40000x40000 px header)", "left out: too large to load safely",
                     path)


def _one_pixel(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "pixel.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path)
    return _left_out("1x1 image (tracking pixel)", "left out: too small to learn from", path)


def _thin_strip(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "strip.png"
    Image.new("RGB", (400, 6), (10, 200, 10)).save(path)
    return _left_out("400x6 strip (a divider graphic)", "left out: too small to learn from", path)


# ---- formats and modes (converted) -------------------------------------------------------------

def _converted(name: str, how: str, path: Path) -> Kind:
    return Kind(name, CONVERTED, how, (path,), (path,))


def _cmyk(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "print_export.jpg"
    photo("coffee").convert("CMYK").save(path, quality=90)
    return _converted("CMYK JPEG (print export)", "converted to RGB", path)


def _png_16bit(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "scan16.png"
    grey = np.asarray(photo("camera").convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(path)  # mode I;16
    return _converted("16-bit grayscale PNG", "scaled to 8 bits, grey to RGB", path)


def _rgba(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "cutout.png"
    image = photo("chelsea").convert("RGBA")
    alpha = Image.new("L", image.size, 0)
    alpha.paste(255, (10, 10, image.width - 10, image.height - 10))
    image.putalpha(alpha)
    image.save(path)
    return _converted("RGBA with transparent areas", "alpha composited over white", path)


def _palette_transparency(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "palette.png"
    image = photo("rocket").convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    image.save(path, transparency=0)
    return _converted("palette PNG with a transparent colour", "converted to RGB over white", path)


def _grayscale(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "bw.jpg"
    photo("camera").convert("L").save(path, quality=90)
    return _converted("grayscale JPEG", "grey to RGB", path)


def _exif_rotated(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "phone_sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo("astronaut").rotate(90, expand=True).save(path, exif=exif, quality=90)
    return _converted("EXIF-rotated phone photo (orientation 6)", "turned upright", path)


def _wrong_extension(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "actually_jpeg.png"
    photo("coffee").save(path, format="JPEG", quality=90)
    return _converted("JPEG data named .png", "read by its content", path)


def _webp_and_bmp(subset: Path, corpus: Corpus) -> Kind:
    webp, bmp = subset / "web.webp", subset / "paint.bmp"
    photo("chelsea").save(webp, quality=90)
    photo("rocket").save(bmp)
    return Kind("WebP and BMP", TRAINED, "trained", (webp, bmp), (webp, bmp))


def _uppercase_extension(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "CAMERA_0001.JPG"
    photo("astronaut").save(path, format="JPEG", quality=90)
    (subset / "CAMERA_0001.TXT").write_text("sks cat, upper case", encoding="utf-8")
    return Kind("upper-case extensions (.JPG + .TXT)", TRAINED, "trained", (path,), (path,))


def _unicode_names(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "café photo ü 猫.png"
    photo("chelsea").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(path)
    (subset / "café photo ü 猫.txt").write_text("sks cat, upside down", encoding="utf-8")
    return Kind("spaces and unicode in names", TRAINED, "trained", (path,), (path,))


def _duplicate(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "chelsea_copy.jpg"
    photo("chelsea").save(path, quality=85)
    return Kind("near-duplicate (re-saved copy)", TRAINED, "trained; the health check warns", (path,), (path,))


def _wide_image(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "panorama.jpg"
    photo("coffee", side=400).resize((400, 60)).save(path, quality=90)
    return Kind("panorama 400x60", TRAINED, "trained in its bucket", (path,), (path,))


# ---- unsupported formats -----------------------------------------------------------------------

def _animated_gif(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "reaction.gif"
    frames = [photo("chelsea"), photo("coffee")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return _left_out("animated GIF", "left out: unsupported format (listed)", path)


def _heic(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "IMG_0042.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    return _left_out("HEIC (iPhone)", "left out: unsupported format (listed)", path)


def _tiff(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "scan.tif"
    photo("rocket").save(path)
    return _left_out("TIFF", "left out: unsupported format (listed)", path)


# ---- captions ----------------------------------------------------------------------------------

def _captioned(subset: Path, stem: str, caption: bytes | None, name: str, how: str, photo_name: str) -> Kind:
    path = subset / f"{stem}.png"
    photo(photo_name).rotate(180).save(path)
    if caption is not None:
        (subset / f"{stem}.txt").write_bytes(caption)
    return Kind(name, CONVERTED if "decoded" in how else TRAINED, how, (path,), (path,))


def _no_caption(subset: Path, corpus: Corpus) -> Kind:
    return _captioned(subset, "uncaptioned", None, "image without caption", "trained on the folder name", "coffee")


def _latin1_caption(subset: Path, corpus: Corpus) -> Kind:
    return _captioned(subset, "latin1", "sks cat, café crème".encode("latin-1"), "caption in latin-1",
                      "decoded (latin-1 / cp1252)", "chelsea")


def _utf16_caption(subset: Path, corpus: Corpus) -> Kind:
    return _captioned(subset, "utf16", codecs.BOM_UTF16_LE + "sks cat, ünïcode".encode("utf-16-le"),
                      "caption in UTF-16 with BOM (Notepad)", "decoded (UTF-16)", "astronaut")


def _nul_caption(subset: Path, corpus: Corpus) -> Kind:
    return _captioned(subset, "nul", b"sks cat,\x00 nul bytes\x00", "caption with NUL bytes",
                      "decoded, NULs dropped", "rocket")


def _empty_caption(subset: Path, corpus: Corpus) -> Kind:
    return _captioned(subset, "empty_caption", b"", "empty caption file", "trained on the folder name", "astronaut")


def _huge_caption(subset: Path, corpus: Corpus) -> Kind:
    words = " ".join(f"tag{i}," for i in range(3000)).encode()
    return _captioned(subset, "huge_caption", b"sks cat, " + words, "huge caption (3000 tags)",
                      "trained; CLIP reads its first 75 tokens (the health check warns)", "coffee")


def _caption_extension(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "dotcaption.png"
    photo("rocket").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    (subset / "dotcaption.caption").write_text("sks cat, dot caption", encoding="utf-8")
    return Kind(".caption file instead of .txt", TRAINED, "trained", (path,), (path,))


def _orphan_caption(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "deleted_photo.txt"
    path.write_text("sks cat, the photo was deleted", encoding="utf-8")
    return Kind("caption without image", IGNORED, "ignored (the health check notes it)", (path,))


# ---- names, folders, links ---------------------------------------------------------------------

def _image_folder(parent: Path, folder: str, name: str, how: str) -> Kind:
    path = parent / folder
    path.mkdir(parents=True)
    photo("chelsea").save(path / "a.png")
    return Kind(name, LEFT_OUT, how, (path,))


def _zero_repeats(subset: Path, corpus: Corpus) -> Kind:
    return _image_folder(subset.parent, "0_zero", "folder with 0 repeats (0_zero)", "left out: skipped as kohya does")


def _negative_repeats(subset: Path, corpus: Corpus) -> Kind:
    return _image_folder(subset.parent, "-1_negative", "folder with a negative repeat count (-1_negative)",
                         "left out: skipped as kohya does")


def _no_repeats(subset: Path, corpus: Corpus) -> Kind:
    return _image_folder(subset.parent, "holiday photos", "folder without a repeat count",
                         "left out: skipped as kohya does")


def _letters_repeats(subset: Path, corpus: Corpus) -> Kind:
    return _image_folder(subset.parent, "abc_def", "folder named abc_def", "left out: skipped as kohya does")


def _loose_image(subset: Path, corpus: Corpus) -> Kind:
    path = subset.parent / "loose.png"
    photo("coffee").save(path)
    return _left_out("image beside the <repeats>_<name> folders", "left out: kohya reads subfolders only", path)


def _empty_subfolder(subset: Path, corpus: Corpus) -> Kind:
    path = subset.parent / "5_empty"
    path.mkdir()
    return Kind("empty subfolder", IGNORED, "ignored", (path,))


def _nested_folder(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "old versions"
    path.mkdir()
    photo("rocket").save(path / "old.png")
    return Kind("folder nested inside a subset", IGNORED, "ignored (kohya does not recurse)", (path,))


def _symlink_out(subset: Path, corpus: Corpus) -> Kind:
    target = corpus.outside / "private.png"
    photo("astronaut").save(target)
    path = subset / "linked.png"
    path.symlink_to(target)
    return _left_out("symlink to an image outside the dataset", "left out: never read", path)


def _caption_link_out(subset: Path, corpus: Corpus) -> Kind:
    target = corpus.outside / "secret.txt"
    target.write_text("private words", encoding="utf-8")
    image = subset / "captionlink.png"
    photo("coffee").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    path = subset / "captionlink.txt"
    path.symlink_to(target)
    return Kind("caption symlinked from outside the dataset", LEFT_OUT, "left out: never read; the image trains "
                "on the folder name", (path,), (image,))


def _folder_link_out(subset: Path, corpus: Corpus) -> Kind:
    target = corpus.outside / "5_more"
    target.mkdir()
    photo("chelsea").save(target / "more.png")
    path = subset.parent / "5_more"
    path.symlink_to(target, target_is_directory=True)
    return _left_out("subfolder symlinked from outside the dataset", "left out: never read", path)


def _dotdot_link(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "up.png"
    os.symlink(os.path.join("..", "..", "..", "outside", "private.png"), path)  # relative, via ..
    return _left_out("relative symlink climbing out with ..", "left out: never read", path)


def _symlink_loop(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "loop.png"
    path.symlink_to(path)
    return _left_out("symlink loop", "left out: leads nowhere", path)


def _dangling_link(subset: Path, corpus: Corpus) -> Kind:
    path = subset / "moved.jpg"
    path.symlink_to(subset / "no_longer_here.jpg")
    return _left_out("symlink to a deleted file", "left out: leads nowhere", path)


def _hidden_files(subset: Path, corpus: Corpus) -> Kind:
    hidden = subset / ".hidden.png"
    photo("chelsea").save(hidden)
    fork = subset / "._chelsea.png"
    fork.write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # macOS AppleDouble resource fork
    return Kind("hidden files and macOS ._ resource forks", IGNORED, "ignored", (hidden, fork))


def _system_files(subset: Path, corpus: Corpus) -> Kind:
    ds_store, thumbs = subset / ".DS_Store", subset / "Thumbs.db"
    ds_store.write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    thumbs.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100))
    return Kind(".DS_Store and Thumbs.db", IGNORED, "ignored", (ds_store, thumbs))


def _png_bytes(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


_MAKERS = (
    _good_photos, _class_images,
    _truncated_jpeg, _corrupt_png, _empty_file, _text_as_png, _html_as_jpg, _random_bytes, _png_signature_only,
    _decompression_bomb, _one_pixel, _thin_strip,
    _cmyk, _png_16bit, _rgba, _palette_transparency, _grayscale, _exif_rotated, _wrong_extension,
    _webp_and_bmp, _uppercase_extension, _unicode_names, _duplicate, _wide_image,
    _animated_gif, _heic, _tiff,
    _no_caption, _latin1_caption, _utf16_caption, _nul_caption, _empty_caption, _huge_caption,
    _caption_extension, _orphan_caption,
    _zero_repeats, _negative_repeats, _no_repeats, _letters_repeats, _loose_image, _empty_subfolder,
    _nested_folder, _symlink_out, _caption_link_out, _folder_link_out, _dotdot_link, _symlink_loop,
    _dangling_link, _hidden_files, _system_files,
)


def readme_table(corpus: Corpus) -> str:
    """The README's table of kinds (markdown), from the corpus itself."""
    rows = [f"| {k.name} | {k.handling} | {k.how} |" for k in corpus.kinds]
    return "\n".join(["| Kind of input | Handling | What happens |", "|---|---|---|"] + rows)
