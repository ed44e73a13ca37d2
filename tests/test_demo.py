"""`lora-studio demo`, shortened (`--fast`): Dataset -> Train -> Compare on the built-in toy model writes
the promised folder, its grid has the promised shape, the LoRA lifts the judge's fidelity over the base
model, and a non-empty --out is refused with nothing written."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lib_training.cli import main
from lib_training.demo.compare import SEEDS, WEIGHTS
from lib_training.lora.io import load_lora


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "lora-studio-demo"
    from lib_training.demo.main import run_demo

    return run_demo(out, seed=1, fast=True)


def test_the_demo_writes_the_whole_loop_into_one_folder(demo):
    out = demo.out
    for name in ("demo_star-000001.safetensors", "demo_star.safetensors", "grid.png", "loss.png", "report.md"):
        assert (out / name).is_file(), name
    assert len(list((out / "dataset" / "img").glob("*/*.png"))) == 8
    assert list((out / "dataset" / "reg").glob("*/*.png"))  # class images from the base model
    tensors, meta = load_lora(out / "demo_star.safetensors")
    assert meta["ss_output_name"] == "demo_star" and meta["ss_num_epochs"] == "2"
    assert any(k.startswith("lora_te_") for k in tensors) and any(k.startswith("lora_unet_") for k in tensors)
    report = (out / "report.md").read_text()
    assert "Compare's recommendation" in report and "The judge's best" in report


def test_the_grid_has_epochs_by_weights_by_prompts_by_seeds(demo):
    with Image.open(demo.outcome.grid) as grid:
        cells = json.loads(grid.info["lora_studio_grid"])["cells"]
        size = grid.size
    files, prompts = len(demo.outcome.shown), 2  # the concept and the class prompt (for drift)
    assert len(cells) == files * len(WEIGHTS) * prompts * len(SEEDS)
    assert len({c["column"] for c in cells}) == len(WEIGHTS)
    assert len({c["row"] for c in cells}) == files * prompts * len(SEEDS)
    assert size[0] >= len(WEIGHTS) * 64 and size[1] >= files * prompts * len(SEEDS) * 64


def test_the_lora_lifts_the_judges_fidelity_over_the_base_model(demo):
    base, *loras = demo.outcome.judge_scores
    assert base.file is None
    # The shortened run (100 steps) rarely draws whole stars yet; the judge's belief rises first.
    assert max(s.belief for s in loras) > 2 * base.belief
    assert max(s.fidelity for s in loras) >= base.fidelity
    assert demo.outcome.pick.choice.file is not None  # Compare recommends one of the LoRA files


def test_a_non_empty_out_folder_is_refused_with_nothing_written(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(out), "--fast"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_the_same_seed_gives_the_same_run(demo, tmp_path):
    """README: "The same --seed gives the same run" — the LoRA to the bit and the judge's numbers."""
    from lib_training.demo.main import run_demo

    again = run_demo(tmp_path / "again", seed=1, fast=True)
    first, _ = load_lora(demo.out / "demo_star.safetensors")
    second, _ = load_lora(again.out / "demo_star.safetensors")
    assert first.keys() == second.keys() and all(first[k].equal(second[k]) for k in first)
    assert [(s.fidelity, s.belief) for s in again.outcome.judge_scores] == \
        [(s.fidelity, s.belief) for s in demo.outcome.judge_scores]
