"""Smoke version of the quality benchmark (bench/quality): LoRAs trained through the engine on the
pixel-space toy model, with the benchmark's default methods (at half the steps and twice the learning rate),
must teach the held-out concept ("a sks shape" = blue star), and DreamBooth's class images must keep
"a shape" from turning into stars. The instance concept ("a sks circle" = a blue outlined circle) is checked
where it is cheap: the base never draws it, and "a circle" stays solid. Its *learning* is not asserted here:
with the preset it is weak and seed-dependent (fidelity 0.06-0.19 at 200-300 steps, bench/quality/README.md),
so a threshold would either be flaky or assert nothing.

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

    concept, instance = CONCEPTS["star"], CONCEPTS[DEFAULT_CONCEPT]
    model = load_base()  # draws the class images, on all cores: nothing else runs yet
    sizes = EvalSizes(per_seen_prompt=0, concept=24, leakage=24)
    lines = []
    for name in ("lora_te", methods.DEFAULT_METHOD):  # without and with class images, else the same
        default = methods.METHODS[name]
        m = methods.method(name, steps=SMOKE_STEPS, unet_lr=default.unet_lr * SMOKE_LR_FACTOR,
                           text_encoder_lr=default.text_encoder_lr * SMOKE_LR_FACTOR)
        dataset = teach.write_dataset(tmp_path / name, model, concept, m.class_images,
                                      class_per_image=m.class_per_image)
        lines.append(teach.Line(m, concept, dataset, tmp_path / f"out-{name}", 0, (m.steps,), sizes, None))
    results, (base, instance_base) = teach.run_lines_and_base(lines, jobs=2, base_sizes=sizes,
                                                              concepts=[concept, instance])
    (plain,), (prior,) = [[s for _, s in line_results] for line_results in results]

    print(f"(fidelity, leakage): base ({base.fidelity:.2f}, {base.leakage:.2f}), lora_te ({plain.fidelity:.2f}, "
          f"{plain.leakage:.2f}), {methods.DEFAULT_METHOD} ({prior.fidelity:.2f}, {prior.leakage:.2f})")
    assert base.fidelity <= 0.1 and base.leakage <= 0.1, base
    # The instance concept's premise: the base draws circles, never the blue outlined one (measured 0 / 0.03 in 32).
    assert instance_base.fidelity <= 0.1 and instance_base.leakage <= 0.1, instance_base
    # Measured with the judge that reads fills (2026-12-05): fidelity 0.25 / 0.33 (a1111 env), 0.25 / 0.29 (current),
    # leakage 0.50 / 0.04 in both; the base draws no blue star in 24.
    assert plain.fidelity >= base.fidelity + 0.15, plain
    assert prior.fidelity >= base.fidelity + 0.15, prior
    assert prior.leakage <= plain.leakage - 0.15, (plain, prior)
