"""Compare grids: cells, cache, labelled layout, infotext — with a fake generator that paints a
colour derived from each cell, so every cell can be found again in the picture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

from lib_training.compare import (
    GridLayout,
    GridSpec,
    LoraFile,
    draw_grid,
    run_files,
    run_grid,
    save_grid,
)
from lib_training.compare.cache import cell_path
from lib_training.compare.layout import GAP, MARGIN, MISSING_FILL, cell_position
from lib_training.errors import CheckpointError, SettingsError
from lib_training.train.events import CancelToken

W, H = 40, 32


def write_lora(path: Path, value: float) -> Path:
    safetensors.numpy.save_file({"lora_unet_x.lora_down.weight": np.full((2, 4), value, np.float32)}, str(path),
                                metadata={"ss_output_name": path.stem})
    return path


def colour_of(lora_name: str | None, weight: float, prompt: str, seed: int) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{lora_name}|{weight:g}|{prompt}|{seed}".encode()).digest()
    return digest[0], digest[1], digest[2]


class PaintingGenerator:
    def __init__(self) -> None:
        self.calls: list = []

    def generate(self, cell):
        self.calls.append(cell)
        name = cell.lora.name if cell.lora is not None else None
        return Image.new("RGB", (cell.width, cell.height), colour_of(name, cell.weight, cell.user_prompt, cell.seed))


@pytest.fixture
def loras(tmp_path) -> list[LoraFile]:
    folder = tmp_path / "Lora"
    folder.mkdir()
    return [LoraFile(write_lora(folder / "subj-000001.safetensors", 1.0), "epoch 1"),
            LoraFile(write_lora(folder / "subj.safetensors", 2.0), "final")]


def make_spec(files, **overrides) -> GridSpec:
    values = dict(files=files, weights=(0.5, 1.0, 0.0), prompts=("photo of sks dog", "sks dog on a beach"),
                  seeds=(1, 2), base_model_hash="0123456789abcdef", width=W, height=H)
    values.update(overrides)
    return GridSpec(**values)


def has_ink(region: Image.Image) -> bool:
    """Dark text pixels (the label fills and the white background are light)."""
    return int(np.asarray(region.convert("L")).min()) < 100


# ---- placement and labels ---------------------------------------------------------------------
@pytest.mark.parametrize("layout, samplers, row_of, col_of", [
    (GridLayout(), ("Euler a",), lambda f, p, s: (f * 2 + p) * 2 + s, lambda w, sm: w),
    (GridLayout(columns=("sampler", "weight"), rows=("prompt", "file", "seed", "steps", "cfg")),
     ("Euler a", "DPM++ 2M"), lambda f, p, s: (p * 2 + f) * 2 + s, lambda w, sm: sm * 3 + w),
])
def test_each_cell_lands_in_its_place(tmp_path, loras, layout, samplers, row_of, col_of):
    spec = make_spec(loras, samplers=samplers, layout=layout)
    n_samplers = len(samplers)
    generator = PaintingGenerator()
    result = run_grid(spec, generator, tmp_path / "cache")
    picture = draw_grid(result)
    g = picture.geometry
    n_rows, n_cols = 2 * 2 * 2, 3 * n_samplers
    assert (g.rows, g.columns) == (n_rows, n_cols)
    assert picture.image.size == (g.left + n_cols * W + (n_cols - 1) * GAP + MARGIN,
                                  g.top + n_rows * H + (n_rows - 1) * GAP + MARGIN)
    pixels = picture.image.load()
    for f, lora in enumerate(loras):
        for w, weight in enumerate(spec.weights):
            for p, prompt in enumerate(spec.prompts):
                for s, seed in enumerate(spec.seeds):
                    for sm in range(n_samplers):
                        x0, y0, x1, y1 = g.cell_box(row_of(f, p, s), col_of(w, sm))
                        name = lora.name if weight else None
                        expected = colour_of(name, weight, prompt, seed)
                        assert pixels[(x0 + x1) // 2, (y0 + y1) // 2] == expected
                        assert pixels[x0, y0] == expected and pixels[x1 - 1, y1 - 1] == expected


def test_labels_and_titles_are_drawn(tmp_path, loras):
    spec = make_spec(loras)
    picture = draw_grid(run_grid(spec, PaintingGenerator(), tmp_path / "cache"))
    image, g = picture.image, picture.geometry
    # one column label per weight, in the strip above the cells, each different
    assert MARGIN < g.labels_top < g.labels_bottom < g.top
    column_labels = [image.crop((g.cell_box(0, c)[0], g.labels_top, g.cell_box(0, c)[2], g.labels_bottom))
                     for c in range(g.columns)]
    assert all(has_ink(label) for label in column_labels)
    assert len({label.tobytes() for label in column_labels}) == g.columns
    # a row label left of every row (the seed column), and the file labels of both blocks
    for r in range(g.rows):
        y0, y1 = g.cell_box(r, 0)[1], g.cell_box(r, 0)[3]
        assert has_ink(image.crop((MARGIN, y0, g.left, y1))), f"row {r} has no label"
    block = 4 * (H + GAP)
    file_labels = [image.crop((MARGIN, g.top + b * block, MARGIN + 60, g.top + (b + 1) * block - GAP))
                   for b in range(2)]
    assert all(has_ink(label) for label in file_labels)
    assert file_labels[0].tobytes() != file_labels[1].tobytes()
    # title, the column axis title ("weight") beside its strip, the row axis titles above the row labels
    assert has_ink(image.crop((0, 0, image.width, g.labels_top)))
    assert has_ink(image.crop((MARGIN, g.labels_top, g.left, g.labels_bottom)))
    assert has_ink(image.crop((MARGIN, g.labels_bottom, g.left, g.top)))
    assert not has_ink(image.crop((g.left, g.labels_bottom, image.width, g.top)))


def test_labels_with_any_language_and_long_prompts(tmp_path, loras):
    long_prompt = "nošnjaoutfit, Latvijas ainava ar baznīcu, " + "very " * 60 + "long"
    spec = make_spec(loras[:1], prompts=(long_prompt,), weights=(1.0,), seeds=(3,))
    picture = draw_grid(run_grid(spec, PaintingGenerator(), tmp_path / "cache"))
    assert picture.geometry.rows == picture.geometry.columns == 1
    assert has_ink(picture.image.crop((0, 0, picture.image.width, picture.geometry.top)))


# ---- cache ------------------------------------------------------------------------------------
def test_cache_hits_do_not_call_the_generator_again(tmp_path, loras):
    spec = make_spec(loras)
    generator = PaintingGenerator()
    first = run_grid(spec, generator, tmp_path / "cache")
    lora_cells = 2 * 2 * 2 * 2  # files x weights above 0 x prompts x seeds
    base_cells = 2 * 2  # weight 0: prompts x seeds, shared by both files
    assert len(generator.calls) == first.generated == lora_cells + base_cells
    assert len(first.cells) == 2 * 3 * 2 * 2
    progress = []
    second = run_grid(spec, generator, tmp_path / "cache", on_progress=progress.append)
    assert len(generator.calls) == lora_cells + base_cells
    assert second.generated == 0 and second.from_cache == lora_cells + base_cells
    assert [e.done for e in progress] == list(range(1, lora_cells + base_cells + 1))
    assert all(e.from_cache for e in progress)
    assert second.images == first.images


def test_changed_weight_or_settings_miss_the_cache(tmp_path, loras):
    generator = PaintingGenerator()
    run_grid(make_spec(loras), generator, tmp_path / "cache")
    before = len(generator.calls)
    run_grid(make_spec(loras, weights=(0.5, 0.75, 0.0)), generator, tmp_path / "cache")
    new = generator.calls[before:]
    assert len(new) == 2 * 2 * 2 and {c.weight for c in new} == {0.75}
    before = len(generator.calls)
    run_grid(make_spec(loras, base_model_hash="another model"), generator, tmp_path / "cache")
    assert len(generator.calls) - before == 2 * 2 * 2 * 2 + 2 * 2
    before = len(generator.calls)
    run_grid(make_spec(loras, steps=(30,)), generator, tmp_path / "cache")
    assert len(generator.calls) - before == 2 * 2 * 2 * 2 + 2 * 2


def test_cache_follows_file_content_not_name(tmp_path, loras):
    generator = PaintingGenerator()
    spec = make_spec(loras[:1], weights=(1.0,))
    run_grid(spec, generator, tmp_path / "cache")
    before = len(generator.calls)
    write_lora(Path(loras[0].path), 5.0)  # retrained: same name, new weights
    run_grid(spec, generator, tmp_path / "cache")
    assert len(generator.calls) - before == 4


def test_damaged_cache_file_is_generated_again(tmp_path, loras):
    generator = PaintingGenerator()
    spec = make_spec(loras[:1], weights=(1.0,), seeds=(1,), prompts=("a",))
    result = run_grid(spec, generator, tmp_path / "cache")
    path = cell_path(tmp_path / "cache", result.cells[0].request.key)
    path.write_bytes(path.read_bytes()[:60])
    again = run_grid(spec, generator, tmp_path / "cache")
    assert again.generated == 1 and len(generator.calls) == 2
    with Image.open(path) as img:
        assert img.convert("RGB").getpixel((0, 0)) == colour_of(loras[0].name, 1.0, "a", 1)


def test_cell_png_carries_infotext(tmp_path, loras):
    spec = make_spec(loras[:1], weights=(0.5,), seeds=(7,), prompts=("photo of sks dog",), samplers=("DDIM",),
                     steps=(25,), cfg_scales=(6.5,), negative_prompt="blurry", extra={"Clip skip": "2"})
    result = run_grid(spec, PaintingGenerator(), tmp_path / "cache")
    with Image.open(result.images[result.cells[0].request.key]) as img:
        text = img.info["parameters"]
        info = json.loads(img.info["lora_studio"])
    sha = hashlib.sha256(Path(loras[0].path).read_bytes()).hexdigest()
    lines = text.split("\n")
    assert lines[0] == "photo of sks dog, <lora:subj-000001:0.5>"
    assert lines[1] == "Negative prompt: blurry"
    for part in ("Steps: 25", "Sampler: DDIM", "CFG scale: 6.5", "Seed: 7", f"Size: {W}x{H}",
                 "Model hash: 0123456789abcdef", "Clip skip: 2", f"subj-000001: {sha}"):
        assert part in lines[2]
    assert info["lora_sha256"] == sha and info["weight"] == 0.5 and info["seed"] == 7


def test_weight_zero_is_the_base_model(tmp_path, loras):
    generator = PaintingGenerator()
    result = run_grid(make_spec(loras, weights=(0.0,), prompts=("p",), seeds=(1,)), generator, tmp_path / "c")
    assert len(result.cells) == 2 and len(generator.calls) == 1
    assert generator.calls[0].lora is None and "<lora:" not in generator.calls[0].prompt


def test_class_prompt_adds_a_row_and_its_baselines(tmp_path, loras):
    generator = PaintingGenerator()
    spec = make_spec(loras, weights=(1.0,), class_prompt="photo of a dog")
    result = run_grid(spec, generator, tmp_path / "cache")
    assert spec.all_prompts[-1] == "photo of a dog"
    assert {c.request.user_prompt for c in result.cells} == set(spec.prompts) | {"photo of a dog"}
    base = [c for c in generator.calls if c.lora is None]
    assert sorted(c.seed for c in base) == [1, 2] and all(c.user_prompt == "photo of a dog" for c in base)
    assert draw_grid(result).geometry.rows == 2 * 3 * 2


def test_saved_grid_png(tmp_path, loras):
    spec = make_spec(loras)
    result = run_grid(spec, PaintingGenerator(), tmp_path / "cache")
    path = save_grid(result, tmp_path / "out" / "grid.png")
    picture = draw_grid(result)
    with Image.open(path) as img:
        assert img.size == picture.image.size
        assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(picture.image))
        description, cells = img.info["Description"], json.loads(img.info["lora_studio_grid"])["cells"]
        assert img.info["parameters"].startswith("photo of sks dog")
    assert "epoch 1" in description and "final" in description and "0123456789abcdef" in description
    assert len(cells) == len(result.cells)
    box = picture.geometry.cell_box(cells[5]["row"], cells[5]["column"])
    name = Path(cells[5]["lora"]).stem if cells[5]["lora"] else None
    assert picture.image.getpixel(box[:2]) == colour_of(name, cells[5]["weight"], cells[5]["user_prompt"],
                                                        cells[5]["seed"])
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_cancel_returns_a_partial_grid_that_resumes(tmp_path, loras):
    token = CancelToken()

    class CancellingGenerator(PaintingGenerator):
        def generate(self, cell):
            if len(self.calls) == 2:
                token.cancel()
            return super().generate(cell)

    generator = CancellingGenerator()
    spec = make_spec(loras)
    partial = run_grid(spec, generator, tmp_path / "cache", cancel=token)
    assert not partial.complete and partial.generated == 3
    picture = draw_grid(partial)
    missing = [c for c in partial.cells if partial.path(c.request) is None]
    assert len(missing) == len(partial.cells) - 3  # the first three cells are LoRA cells, not shared ones
    box = picture.geometry.cell_box(*cell_position(spec, missing[0]))
    assert picture.image.getpixel(box[:2]) == MISSING_FILL
    full = run_grid(spec, PaintingGenerator(), tmp_path / "cache")
    assert full.complete and full.from_cache == 3
    assert picture.image.size == draw_grid(full).image.size


# ---- spec checks and run files ----------------------------------------------------------------
@pytest.mark.parametrize("overrides, error, words", [
    (dict(seeds=(-1,)), SettingsError, "random"),
    (dict(weights=(1.0, 1.0)), SettingsError, "twice"),
    (dict(base_model_hash=" "), SettingsError, "hash"),
    (dict(prompts=()), SettingsError, "prompt"),
    (dict(weights=(float("nan"),)), SettingsError, "finite"),
    (dict(layout=GridLayout(columns=("weight",), rows=("file", "seed"))), SettingsError, "missing: prompt"),
])
def test_bad_specs_are_refused(tmp_path, loras, overrides, error, words):
    with pytest.raises(error, match=words):
        run_grid(make_spec(loras, **overrides), PaintingGenerator(), tmp_path / "cache")


def test_missing_or_pickle_lora_is_refused(tmp_path, loras):
    with pytest.raises(CheckpointError, match="does not exist"):
        run_grid(make_spec([tmp_path / "gone.safetensors"]), PaintingGenerator(), tmp_path / "cache")
    (tmp_path / "old.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="safetensors"):
        run_grid(make_spec([tmp_path / "old.ckpt"]), PaintingGenerator(), tmp_path / "cache")


def test_run_files_lists_epochs_then_final(tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    for name in ("me-000010.safetensors", "me-000002.safetensors", "me.safetensors", "me-v2.safetensors",
                 "mee-000001.safetensors", "me-000003.safetensors.tmp", "other.safetensors"):
        (folder / name).write_bytes(b"")
    files = run_files(folder, "me")
    assert [Path(f.path).name for f in files] == ["me-000002.safetensors", "me-000010.safetensors", "me.safetensors"]
    assert [f.display for f in files] == ["me epoch 2", "me epoch 10", "me (final)"]
    with pytest.raises(SettingsError, match="No LoRA files of the run 'nothing'"):
        run_files(folder, "nothing")


def test_cells_are_scaled_to_the_cell_size(tmp_path, loras):
    class BigGenerator(PaintingGenerator):
        def generate(self, cell):
            return super().generate(cell).resize((cell.width * 3, cell.height * 3))

    result = run_grid(make_spec(loras[:1], weights=(1.0,), prompts=("p",), seeds=(1, 2)), BigGenerator(),
                      tmp_path / "cache")
    picture = draw_grid(result, cell_size=(W // 2, H // 2))
    g = picture.geometry
    assert (g.cell_width, g.cell_height, g.rows, g.columns) == (W // 2, H // 2, 2, 1)
    for row, seed in enumerate((1, 2)):
        x0, y0, x1, y1 = g.cell_box(row, 0)
        assert picture.image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == colour_of(loras[0].name, 1.0, "p", seed)
