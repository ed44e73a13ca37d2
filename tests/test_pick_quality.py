"""The pick experiment's rules (bench/quality/pick_quality.py): what counts as the truth, what Compare's
`recommend` and the validation loss pick, and how the hits are counted — on hand-made cells, no training."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "quality"))

import pick_quality as pq  # noqa: E402
from lib_training.compare.recommend import Bounds  # noqa: E402

BASE_SEEN = 1.0  # admissible: seen >= 0.9, leakage <= 0.05


def cell(step, weight, fidelity, seen, leakage, val_loss=None, drift=0.01, cfid=None):
    return {"step": step, "weight": weight, "fidelity": fidelity, "seen_accuracy": seen, "leakage": leakage,
            "val_loss": val_loss, "compare": {"fidelity": fidelity if cfid is None else cfid, "drift": drift,
                                              "diversity": 0.2}}


def run(cells):
    base = cell(0, 0.0, 0.0, BASE_SEEN, 0.0)
    return {"method": "m", "seed": 0, "base": base, "cells": cells}


def test_the_truth_is_the_best_admissible_cell():
    cells = [cell(100, 1.0, 0.9, 0.5, 0.0), cell(100, 0.5, 0.6, 0.95, 0.0), cell(200, 0.5, 0.7, 0.92, 0.05)]
    assert (pq.truth(cells, BASE_SEEN)["step"], pq.truth(cells, BASE_SEEN)["weight"]) == (200, 0.5)


def test_without_an_admissible_cell_the_truth_is_the_least_bad():
    cells = [cell(100, 1.0, 0.9, 0.5, 0.3), cell(100, 0.5, 0.1, 0.85, 0.06), cell(200, 0.5, 0.4, 0.80, 0.06)]
    t = pq.truth(cells, BASE_SEEN)
    assert (t["step"], t["weight"]) == (100, 0.5)  # shortfall 0.06 < 0.11 < 0.65


def test_the_validation_pick_is_the_lowest_loss_at_weight_one():
    cells = [cell(100, 1.0, 0.1, 0.9, 0.0, val_loss=0.02), cell(200, 1.0, 0.2, 0.9, 0.0, val_loss=0.01),
             cell(200, 0.5, 0.0, 0.9, 0.0, val_loss=0.001)]
    assert pq.validation_pick(cells)["step"] == 200 and pq.validation_pick(cells)["weight"] == 1.0
    assert pq.validation_pick([cell(100, 1.0, 0.1, 0.9, 0.0)]) is None  # no validation loss in the files


def test_recommend_follows_its_drift_bound_and_the_table_counts_hits():
    far = cell(400, 1.0, 0.8, 0.5, 0.2, drift=0.15, cfid=0.9)  # the judge sees drift; the embedder a little
    near = cell(100, 0.5, 0.6, 0.95, 0.0, drift=0.03, cfid=0.7)
    runs = [run([far, near])]
    assert pq.compare_pick(runs[0]["cells"], runs[0]["base"], Bounds(max_drift=0.20)) is far
    assert pq.compare_pick(runs[0]["cells"], runs[0]["base"], Bounds(max_drift=0.05)) is near
    _, loose = pq.pick_table(runs, Bounds(max_drift=0.20))
    _, tight = pq.pick_table(runs, Bounds(max_drift=0.05))
    assert loose["recommend"]["same cell"] == "0/1" and tight["recommend"]["same cell"] == "1/1"
    assert "validation" not in loose  # no cell carries a validation loss
