"""Compare metrics on synthetic embeddings with known answers, the recommendation on constructed
tables, and loss curves read from written log.jsonl files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

from lib_training.compare import (
    METRIC_EXPLANATIONS,
    Bounds,
    GridSpec,
    GroupMetrics,
    LoraFile,
    MetricsReport,
    alignment_text,
    compute_metrics,
    draw_loss_chart,
    ema,
    list_runs,
    read_loss_log,
    read_runs,
    recommend,
    run_grid,
)
from lib_training.compare.curves import LOG_FILE, PALETTE
from lib_training.compare.metrics import clip_score, diversity_score, drift_score, fidelity_score
from lib_training.errors import SettingsError

R, G, B = (255, 0, 0), (0, 255, 0), (0, 0, 255)
Y, C, M = (255, 255, 0), (0, 255, 255), (255, 0, 255)
S = 1 / math.sqrt(2)


def write_lora(path: Path, value: float) -> Path:
    safetensors.numpy.save_file({"w": np.full(4, value, np.float32)}, str(path))
    return path


# ---- the four numbers -------------------------------------------------------------------------
def test_metric_functions_known_values():
    e = np.eye(3)
    assert fidelity_score(e[0], np.stack([e[0], e[1]])) == pytest.approx(0.5)
    assert fidelity_score(5 * e[0], np.stack([2 * e[0]])) == pytest.approx(1.0)  # scale does not matter
    assert clip_score(np.array([1.0, 0, 0]), np.array([0.6, 0.8, 0])) == pytest.approx(60.0)
    assert clip_score(np.array([1.0, 0, 0]), np.array([-1.0, 0.1, 0])) == 0.0  # floored at 0
    assert drift_score(e[0], 3 * e[0]) == pytest.approx(0.0, abs=1e-12)
    assert drift_score(e[0], e[1]) == pytest.approx(1.0)
    assert drift_score(e[0], -e[0]) == pytest.approx(2.0)
    assert diversity_score(e) == pytest.approx(1.0)
    assert diversity_score(np.stack([e[0], e[0], e[0]])) == pytest.approx(0.0, abs=1e-12)
    assert diversity_score(np.stack([e[0], e[0], e[1]])) == pytest.approx(2 / 3)
    assert diversity_score(e[:1]) is None
    assert set(METRIC_EXPLANATIONS) == {"fidelity", "alignment", "drift", "diversity"}


def test_alignment_text_drops_trigger_and_lora_tags():
    assert alignment_text("photo of sks dog, <lora:subj-000004:0.8>", ["sks"]) == "photo of dog"
    assert alignment_text("SKS, a dog in snow", ["sks"]) == "a dog in snow"
    assert alignment_text("nosnjaoutfit woman, nosnjaoutfits", ["nosnjaoutfit"]) == "woman, nosnjaoutfits"
    assert alignment_text("a, sks, b <lyco:x:1>", ["sks", ""]) == "a, b"


# ---- compute_metrics end to end with a colour embedder ----------------------------------------
class ColourEmbedder:
    """An image's embedding is its mean colour; texts are looked up in a table."""

    def __init__(self, texts: dict[str, tuple]):
        self.texts = texts
        self.seen_texts: list[str] = []

    def embed_images(self, images):
        return np.stack([np.asarray(img.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for img in images])

    def embed_texts(self, texts):
        self.seen_texts.extend(texts)
        return np.stack([np.asarray(self.texts[t], dtype=np.float64) for t in texts])


INSTANCE, CLASS = "photo of sks dog", "photo of a dog"
TABLE = {  # (file, weight, prompt) -> colour per seed (1, 2)
    ("a", 1.0, INSTANCE): (R, R), ("a", 0.5, INSTANCE): (R, B),
    ("b", 1.0, INSTANCE): (Y, Y), ("b", 0.5, INSTANCE): (Y, C),
    ("a", 1.0, CLASS): (R, R), ("a", 0.5, CLASS): (B, B),
    ("b", 1.0, CLASS): (C, C), ("b", 0.5, CLASS): (B, B),
    (None, 0.0, CLASS): (B, B), (None, 0.0, INSTANCE): (G, M),
}


class TableGenerator:
    def __init__(self):
        self.calls = 0

    def generate(self, cell):
        self.calls += 1
        name = cell.lora.name if cell.lora is not None else None
        colour = TABLE[(name, cell.weight, cell.user_prompt)][cell.seed - 1]
        return Image.new("RGB", (16, 16), colour)


@pytest.fixture
def colour_report(tmp_path):
    files = [LoraFile(write_lora(tmp_path / f"{name}.safetensors", value)) for name, value in (("a", 1.0), ("b", 2.0))]
    spec = GridSpec(files=files, weights=(0.5, 1.0), prompts=(INSTANCE,), seeds=(1, 2), base_model_hash="m",
                    width=16, height=16, class_prompt=CLASS, trigger_words=("sks",))
    result = run_grid(spec, TableGenerator(), tmp_path / "cache")
    training = [Image.new("RGB", (8, 8), R), Image.new("RGB", (8, 8), G)]
    embedder = ColourEmbedder({"photo of dog": (1, 0, 0), CLASS: (0, 0, 1)})
    return compute_metrics(result, embedder, training, batch_size=3), embedder


def group(report: MetricsReport, name: str | None, weight: float) -> GroupMetrics:
    return next(g for g in report.groups if (g.file.name if g.file else None) == name and g.weight == weight)


def test_metrics_known_answers(colour_report):
    report, embedder = colour_report
    assert sorted(set(embedder.seen_texts)) == [CLASS, "photo of dog"]  # trigger removed, no LoRA tags
    assert len(report.groups) == 4 and report.base is None  # weight 0 was not on the grid
    a1, a05, b1, b05 = (group(report, "a", 1.0), group(report, "a", 0.5), group(report, "b", 1.0),
                        group(report, "b", 0.5))
    # fidelity: instance prompt only, mean cosine to the red and the green training image
    assert a1.fidelity == pytest.approx(0.5)
    assert a05.fidelity == pytest.approx((0.5 + 0.0) / 2)
    assert b1.fidelity == pytest.approx(S)
    assert b05.fidelity == pytest.approx((S + S / 2) / 2)
    # drift: class prompt against the base model's blue
    assert a1.drift == pytest.approx(1.0)
    assert a05.drift == pytest.approx(0.0, abs=1e-12)
    assert b1.drift == pytest.approx(1 - S)
    assert b05.drift == pytest.approx(0.0, abs=1e-12)
    # diversity: mean over (instance, class) of the seed-pair distance
    assert a1.diversity == pytest.approx(0.0, abs=1e-12)
    assert a05.diversity == pytest.approx((1.0 + 0.0) / 2)
    assert b05.diversity == pytest.approx((0.5 + 0.0) / 2)
    # alignment: 100 x cosine to the prompt's text embedding, averaged over all cells
    assert a1.alignment == pytest.approx((100 + 0) / 2)
    assert b1.alignment == pytest.approx((100 * S + 100 * S) / 2)
    assert a1.cells == 4 and a1.prompt_tag == "<lora:a:1>"
    rows = report.rows()
    assert {r["choice"] for r in rows} == {"a @ 1", "a @ 0.5", "b @ 1", "b @ 0.5"}
    per_cell = [m for m in report.cells if m.cell.request.user_prompt == CLASS and m.cell.request.lora.name == "b"
                and m.cell.request.weight == 1.0]
    assert len(per_cell) == 2 and all(m.drift == pytest.approx(1 - S) for m in per_cell)


def test_recommendation_from_measured_grid(colour_report):
    report, _ = colour_report
    best = recommend(report)
    assert best.within_bounds
    assert (best.choice.file.name, best.choice.weight) == ("b", 0.5)  # a@0.5 is within too but less faithful
    assert "b @ 0.5" in best.reason and f"{(S + S / 2) / 2:.3f}" in best.reason
    loose = recommend(report, Bounds(max_drift=0.3, min_diversity=None))
    assert (loose.choice.file.name, loose.choice.weight) == ("b", 1.0)
    assert loose.prompt_text("sks") == "sks, <lora:b:1>"


def test_weight_zero_is_one_base_group(tmp_path):
    files = [LoraFile(write_lora(tmp_path / f"{name}.safetensors", value)) for name, value in (("a", 1.0), ("b", 2.0))]
    spec = GridSpec(files=files, weights=(0.0, 1.0), prompts=(INSTANCE,), seeds=(1, 2), base_model_hash="m",
                    width=16, height=16, trigger_words=("sks",))
    result = run_grid(spec, TableGenerator(), tmp_path / "cache")
    report = compute_metrics(result, ColourEmbedder({"photo of dog": (1, 0, 0)}), [Image.new("RGB", (4, 4), R)])
    base = report.base
    assert base is not None and sum(1 for g in report.groups if g.file is None) == 1
    assert base.fidelity == pytest.approx(0.0 + S / 2)  # green and magenta against red, mean of two seeds
    assert base.diversity == pytest.approx(1.0)  # green and magenta are orthogonal
    assert base.drift is None and base.cells == 2
    best = recommend(report)  # no class prompt: drift is not checked, and the reason says so
    assert "Not checked: drift" in best.reason and best.unchecked == ("drift (no class prompt in the comparison)",)


# ---- recommendation on constructed tables -----------------------------------------------------
def g(name, weight, fidelity, drift=0.05, diversity=0.2, alignment=25.0) -> GroupMetrics:
    file = LoraFile(Path(f"/loras/{name}.safetensors")) if name else None
    return GroupMetrics(file, weight, fidelity, alignment, drift, diversity, 4)


def test_recommend_best_fidelity_within_bounds():
    report = MetricsReport((), (
        g(None, 0.0, 0.99, drift=None),  # the base model is never recommended
        g("e4", 1.0, 0.90, drift=0.35),  # most faithful, but changes the class
        g("e4", 0.8, 0.85, drift=0.15),
        g("e8", 1.0, 0.88, diversity=0.01),  # overfitted: every seed the same
        g("e2", 1.0, 0.70),
    ))
    best = recommend(report)
    assert best.within_bounds and (best.choice.file.name, best.choice.weight) == ("e4", 0.8)
    assert best.numbers["fidelity"] == 0.85 and best.numbers["drift"] == 0.15
    assert "e4 @ 0.8" in best.reason and "0.850" in best.reason and "2 of 4" in best.reason
    assert "0.990" in best.reason  # the base model's fidelity, for reference
    relaxed = recommend(report, Bounds(max_drift=0.4))
    assert (relaxed.choice.file.name, relaxed.choice.weight) == ("e4", 1.0)
    strict = recommend(report, Bounds(min_alignment=30.0))
    assert not strict.within_bounds


def test_recommend_when_nothing_is_within_bounds():
    report = MetricsReport((), (
        g("e4", 1.0, 0.95, drift=0.60),  # 200 % over the drift bound
        g("e4", 0.6, 0.80, drift=0.25),  # 25 % over
        g("e8", 1.0, 0.90, drift=0.22, diversity=0.02),  # 10 % + 60 %
    ))
    best = recommend(report)
    assert not best.within_bounds
    assert (best.choice.file.name, best.choice.weight) == ("e4", 0.6)
    assert best.reason.startswith("No choice stays within bounds (drift <= 0.20, diversity >= 0.05)")
    assert "e4 @ 0.6" in best.reason and "drift 0.250 > 0.20" in best.reason
    assert best.violations == ("drift 0.250 > 0.20",)
    tie = MetricsReport((), (g("x", 1.0, 0.5, drift=0.3), g("y", 1.0, 0.7, drift=0.3)))
    assert recommend(tie).choice.file.name == "y"  # equally far outside: the more faithful one


def test_recommend_needs_a_lora_choice():
    with pytest.raises(SettingsError, match="weight other than 0"):
        recommend(MetricsReport((), (g(None, 0.0, 0.9),)))


# ---- loss curves ------------------------------------------------------------------------------
def write_log(folder: Path, entries, extra_lines=()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": s, "loss": v}) for s, v in entries] + list(extra_lines)
    (folder / LOG_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_log_file_name_matches_the_training_loop():
    from lib_training.train import loop

    assert loop.LOG_FILE == LOG_FILE


def test_ema_is_debiased():
    assert ema([1.0, 3.0], weight=0.5) == pytest.approx([1.0, 7 / 3])
    assert ema([0.2] * 50, weight=0.95) == pytest.approx([0.2] * 50)
    assert ema([1.0, 2.0, 3.0], weight=0.0) == [1.0, 2.0, 3.0]
    with pytest.raises(SettingsError):
        ema([1.0], weight=1.0)


def test_read_loss_log(tmp_path):
    runs = tmp_path / "out" / "lora_studio_runs"
    write_log(runs / "v1", [(1, 0.5), (2, 0.3), (3, 0.4), (2, 0.35)],  # step 2 rewritten by a resume
              extra_lines=['{"step": 4, "loss": NaN}', "", '{"step": 5, "lo'])  # cut by a crash
    write_log(runs / "v2", [(s, 0.1 + 0.01 * s) for s in range(1, 31)])
    (runs / "no_log").mkdir()
    assert list_runs(runs) == ["v1", "v2"]
    v1, v2 = read_runs(runs, ["v1", "v2"], ema_weight=0.5)
    assert v1.name == "v1" and v1.steps == (1, 2, 3) and v1.loss == (0.5, 0.35, 0.4)
    assert v1.smoothed == pytest.approx(ema([0.5, 0.35, 0.4], 0.5))
    assert v1.skipped_lines == 2 and v1.final_smoothed == pytest.approx(v1.smoothed[-1])
    assert len(v2.steps) == 30 and v2.loss[-1] == pytest.approx(0.4)
    assert read_loss_log(runs / "v2" / LOG_FILE).name == "v2"
    with pytest.raises(SettingsError, match="no_log"):
        read_loss_log(runs / "no_log")


def test_loss_chart_draws_each_run(tmp_path):
    runs = tmp_path / "runs"
    rng = np.random.default_rng(0)
    write_log(runs / "first", [(s, float(0.3 + 0.05 * rng.standard_normal())) for s in range(1, 101)])
    write_log(runs / "second", [(s, float(0.15 + 0.05 * rng.standard_normal())) for s in range(1, 61)])
    write_log(runs / "single", [(1, 0.2)])
    series = read_runs(runs, ["first", "second", "single"])
    chart = draw_loss_chart(series, size=(640, 400))
    assert chart.size == (640, 400)
    colours = {tuple(c) for c in np.asarray(chart).reshape(-1, 3)}
    for colour in PALETTE[:3]:
        assert colour in colours
    # the lower run is drawn lower: mean row of each run's colour
    pixels = np.asarray(chart)
    rows = [np.nonzero(np.all(pixels[:, :, :] == c, axis=2))[0] for c in PALETTE[:2]]
    legend_top = 400 - 3 * 20
    assert rows[0][rows[0] < legend_top].mean() < rows[1][rows[1] < legend_top].mean()
    empty = draw_loss_chart([], size=(300, 200))
    assert empty.size == (300, 200) and np.asarray(empty).min() < 100  # says there is nothing yet
