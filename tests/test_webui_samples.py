"""Training samples in the WebUI leave no conditioning behind in A1111's cond cache.

A1111 keeps the last positive/negative conds across generations ("Persistent cond cache", on by
default), keyed on prompt, steps, size and `<lora:…>` tags but not on hooks. A sample made with the
run's text-encoder LoRA hooked in must neither reuse a clean cached cond nor leave its own for the
next plain txt2img — the cause of a Compare "weight 0" cell that differed from a base txt2img.
`modules.processing` is faked here with A1111's caching shape: class-level [params, cond] lists that
a processing object shares and fills in place.
"""

from __future__ import annotations

import dataclasses
import sys
from types import ModuleType, SimpleNamespace

import pytest
from PIL import Image

from lib_training.config import TrainConfig
from lib_training.train import events as ev

CLEAN = [("", 1, 64, 64), "clean cond of ''"]


@pytest.fixture
def a1111(monkeypatch):
    seen: dict = {"closed": 0, "cache_at_sampling": []}

    class Processing:
        cached_c = [None, None]
        cached_uc = list(CLEAN)  # a plain txt2img of the same size ran before the sample

    class Txt2Img(Processing):
        cached_hr_c = [None, None]
        cached_hr_uc = [None, None]

        def __init__(self, **kw):
            self.kw, self.cached_uc = kw, Processing.cached_uc  # A1111's __post_init__ shares the list

        def close(self):  # with "Persistent cond cache" on, A1111's close() keeps the caches
            seen["closed"] += 1

    def process_images(p):
        seen["cache_at_sampling"].append(list(p.cached_uc))
        p.cached_uc[:] = [("", 1, 64, 64), "cond of '' with the LoRA hooked in"]
        if p.kw["prompt"] == "fails":
            raise RuntimeError("NaN in the sample")
        return SimpleNamespace(images=[Image.new("RGB", (8, 8))])

    processing = ModuleType("modules.processing")
    processing.StableDiffusionProcessing, processing.StableDiffusionProcessingTxt2Img = Processing, Txt2Img
    processing.process_images = process_images
    shared = ModuleType("modules.shared")
    shared.opts = SimpleNamespace(lora_studio_sample_steps=1)
    shared.sd_model = SimpleNamespace(sd_checkpoint_info=SimpleNamespace(title="random-sd15.safetensors"))
    shared.state = SimpleNamespace(job_count=0, job_no=0, textinfo="", sampling_steps=0, sampling_step=0,
                                   assign_current_image=lambda image: None)
    modules = ModuleType("modules")
    modules.processing, modules.shared = processing, shared
    for name, module in (("modules", modules), ("modules.processing", processing), ("modules.shared", shared)):
        monkeypatch.setitem(sys.modules, name, module)

    from lib_training.webui.backend import runtime

    notes: list = []
    monkeypatch.setattr(runtime, "get_service", lambda: SimpleNamespace(note=notes.append,
                                                                        add_sample=lambda step, path: None))
    return SimpleNamespace(seen=seen, processing=processing, notes=notes, runtime=runtime)


def config_in(folder) -> TrainConfig:
    config = TrainConfig()
    output = dataclasses.replace(config.output, name="run", runs_dir=str(folder))
    return dataclasses.replace(config, output=output, data=dataclasses.replace(config.data, resolution=64))


def test_a_sample_neither_reuses_nor_leaves_a_cached_cond(a1111, tmp_path):
    a1111.runtime._make_samples(ev.SampleRequest(step=5, prompts=("sks", "fails"), seed=1), config_in(tmp_path))
    assert a1111.seen["cache_at_sampling"] == [[None, None], [None, None]], "a sample used a clean cached cond"
    processing = a1111.processing
    for owner, name in ((processing.StableDiffusionProcessing, "cached_c"),
                        (processing.StableDiffusionProcessing, "cached_uc"),
                        (processing.StableDiffusionProcessingTxt2Img, "cached_hr_uc")):
        assert getattr(owner, name) == [None, None], f"{name} keeps the hooked cond for the next txt2img"
    assert a1111.seen["closed"] == 2  # closed also when the sample failed
    assert len(a1111.notes) == 1 and "NaN" in a1111.notes[0]
    assert (tmp_path / "run" / "samples" / "000005-0.png").is_file()


def test_a_webui_run_without_a_sample_interval_passes_validation_and_samples_only_at_the_end(a1111, tmp_path,
                                                                                            monkeypatch):
    """A run that asks for no intermediate samples still gets the final one (the card's preview); the
    stand-in interval must stay within LIMITS, or every API start with default settings answers 400."""
    monkeypatch.setattr(a1111.runtime, "lora_dir", lambda: tmp_path / "Lora")
    monkeypatch.setattr(a1111.runtime, "runs_dir", lambda: tmp_path / "runs")
    requested = config_in(tmp_path)
    requested = dataclasses.replace(requested, data=dataclasses.replace(requested.data, train_dir=str(tmp_path)))
    config = a1111.runtime.for_webui(requested).validate()
    t = config.train
    assert t.sample_prompts == ["run"] and t.sample_every_steps > 0
    total = 40
    sampled = [s for s in range(1, total + 1) if s % t.sample_every_steps == 0 or s == total]
    assert sampled == [total]
