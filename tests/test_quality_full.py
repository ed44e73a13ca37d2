"""The quality benchmark's full fine-tune row (bench/quality, method `dreambooth_full`): the method table
holds it with DreamBooth's learning rate, the engine config it builds asks for a full fine-tune with an
extracted LoRA, and a few steps through the engine write a toy checkpoint that `model_from_tensors` loads
back as exactly the trained weights (what the benchmark scores), while the base model is left as it was.

Uses the committed base fixture (hash-checked); skipped when it is missing.
The benchmark row: python bench/quality/run_quality.py --methods dreambooth_full (bench/quality/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

QUALITY = Path(__file__).resolve().parents[1] / "bench" / "quality"
sys.path.insert(0, str(QUALITY))

from lib_training.demo.fixtures_io import FIXTURES, fixture_available  # noqa: E402

needs_base = pytest.mark.skipif(not fixture_available("base.safetensors"),
                                reason=f"base fixture missing in {FIXTURES}; build it with "
                                       "python bench/quality/build_fixtures.py --only base")


def test_the_table_holds_a_full_fine_tune_with_class_images():
    import methods

    full = methods.METHODS["dreambooth_full"]
    lora = methods.METHODS["dreambooth_lora"]
    assert full.full and full.prior and full.class_images == lora.class_images
    assert full.unet_lr == pytest.approx(methods.FULL_UNET_LR * methods.LR_FACTOR)
    assert full.text_encoder_lr / full.unet_lr == pytest.approx(lora.text_encoder_lr / lora.unet_lr)
    assert full.extract_rank > 0
    assert "dreambooth_full" not in methods.LORA_METHODS and "dreambooth_lora" in methods.LORA_METHODS


def test_engine_config_asks_for_a_full_fine_tune_and_its_lora(tmp_path):
    import methods
    import teach

    from lib_training.data.importer import REG_DIRNAME, TRAIN_DIRNAME

    for folder in (TRAIN_DIRNAME, REG_DIRNAME):
        (tmp_path / "data" / folder).mkdir(parents=True)
    c = teach.engine_config(methods.METHODS["dreambooth_full"], tmp_path / "data", tmp_path / "out", seed=0)
    c.validate()
    assert c.network.method == "full"
    assert c.output.extract_lora_rank == methods.EXTRACT_RANK
    assert Path(c.output.extract_lora_dir).parent == tmp_path / "out"
    assert teach.engine_config(methods.METHODS["dreambooth_lora"], tmp_path, tmp_path, 0).network.method == "lora"


@needs_base
def test_a_full_run_writes_a_checkpoint_that_loads_as_the_trained_model(tmp_path):
    import methods
    import teach
    from concepts import CONCEPTS
    from lib_training.demo.base_model import base_tensors, load_base, model_from_tensors
    from lib_training.lora.io import load_lora

    torch.manual_seed(0)
    model = load_base()
    before = {k: v.clone() for k, v in base_tensors(model).items()}
    m = methods.method("dreambooth_full", class_images="", steps=4, unet_lr=1e-3, extract_rank=2)
    dataset = teach.write_dataset(tmp_path / "data", model, CONCEPTS["star"], n=4)
    files, extracted, _ = teach.train_run(model, m, dataset, tmp_path / "out", seed=0)

    tensors, meta = load_lora(files[-1])
    assert meta["lora_studio.method"] == "full" and int(meta["ss_steps"]) == 4
    assert tensors.keys() == before.keys()
    changed = [k for k in before if not torch.equal(tensors[k], before[k])]
    assert any(k.startswith("unet.") for k in changed) and any(k.startswith("te.") for k in changed)
    assert all(torch.equal(v, before[k]) for k, v in base_tensors(model).items()), "base model not restored"
    trained = base_tensors(model_from_tensors(tensors))
    assert all(torch.equal(trained[k], tensors[k]) for k in tensors)
    lora, _ = load_lora(extracted)
    assert any(k.endswith("lora_down.weight") and v.shape[0] == 2 for k, v in lora.items())
