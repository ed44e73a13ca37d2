"""Smoke version of the quality benchmark (bench/quality): LoRAs trained through the engine on the
pixel-space toy model, with the benchmark's default methods (at half the steps and twice the learning rate),
must teach both concepts — the held-out shape ("a sks shape" = blue star) and the instance ("a sks circle" =
a blue outlined circle) — and DreamBooth's class images must keep the class prompt ("a shape", "a circle")
from turning into the concept.

Uses the committed fixtures (judge + base model, hash-checked); skipped when they are missing.
The full benchmark: python bench/quality/run_quality.py (bench/quality/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"
sys.path.insert(0, str(QUALITY))

from lib_training.demo.fixtures_io import FIXTURES, fixture_available  # noqa: E402

# Half the benchmark's steps at twice its learning rate, no seen-prompt samples (nothing here asserts on
# them) and the base scored beside the training runs: the benchmark's effect in about two minutes.
SMOKE_STEPS, SMOKE_LR_FACTOR = 200, 2.0

pytestmark = pytest.mark.skipif(
    not (fixture_available("judge.safetensors") and fixture_available("base.safetensors")),
    reason=f"quality fixtures missing in {FIXTURES}; build them with python bench/quality/build_fixtures.py")


def test_lora_teaches_the_concept_and_class_images_keep_the_class(tmp_path):
    import methods
    import teach
    from concepts import CONCEPTS, DEFAULT_CONCEPT
    from lib_training.demo.base_model import load_base
    from metrics import EvalSizes

    star, instance = CONCEPTS["star"], CONCEPTS[DEFAULT_CONCEPT]
    model = load_base()  # draws the class images, on all cores: nothing else runs yet
    sizes = EvalSizes(per_seen_prompt=0, concept=24, leakage=24)
    lines = []
    for concept in (star, instance):
        for name in ("lora_te", methods.DEFAULT_METHOD):  # without and with class images, else the same
            default = methods.METHODS[name]
            m = methods.method(name, steps=SMOKE_STEPS, unet_lr=default.unet_lr * SMOKE_LR_FACTOR,
                               text_encoder_lr=default.text_encoder_lr * SMOKE_LR_FACTOR)
            dataset = teach.write_dataset(tmp_path / f"{concept.name}-{name}", model, concept, m.class_images,
                                          class_per_image=m.class_per_image)
            lines.append(teach.Line(m, concept, dataset, tmp_path / f"out-{concept.name}-{name}", 0, (m.steps,),
                                    sizes, None))
    results, bases = teach.run_lines_and_base(lines, jobs=2, base_sizes=sizes, concepts=[star, instance])
    (plain, prior, i_plain, i_prior) = [s for line_results in results for _, s in line_results]

    for name, base, p, q in (("star", bases[0], plain, prior), ("instance", bases[1], i_plain, i_prior)):
        print(f"{name} (fidelity, leakage): base ({base.fidelity:.2f}, {base.leakage:.2f}), lora_te ({p.fidelity:.2f}, "
              f"{p.leakage:.2f}), {methods.DEFAULT_METHOD} ({q.fidelity:.2f}, {q.leakage:.2f})")
    for base in bases:  # the premise: the base draws neither concept, nor the class as the concept
        assert base.fidelity <= 0.1 and base.leakage <= 0.1, base
    # Measured with the judge that reads fills (2026-12-05): fidelity 0.25 / 0.33 (a1111 env), 0.25 / 0.29 (current),
    # leakage 0.50 / 0.04 in both; the base draws no blue star in 24.
    assert plain.fidelity >= bases[0].fidelity + 0.15, plain
    assert prior.fidelity >= bases[0].fidelity + 0.15, prior
    assert prior.leakage <= plain.leakage - 0.15, (plain, prior)
    # The instance: without class images the LoRA draws the outlined circle and turns every circle hollow;
    # class images take most of that leakage back (it learns less: bench/quality/README.md, issue 24).
    assert i_plain.fidelity >= bases[1].fidelity + 0.25, i_plain
    assert i_prior.leakage <= i_plain.leakage - 0.4, (i_plain, i_prior)
