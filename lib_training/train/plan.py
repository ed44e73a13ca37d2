"""Everything decided before the first step: dataset, samples, step counts, output paths.

The dataset comes from the pre-flight (data/preflight.py), which read every file once before the
model was touched: the plan trains on the files it kept, bucketed by the sizes it read.
Every output path is checked here, so bad input fails with one clear message and nothing written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig
from ..data.dataset import Sample, plan_samples
from ..data.folders import DatasetSpec, tag_frequency
from ..data.preflight import PreflightReport, preflight
from ..errors import DatasetError, SettingsError
from ..fileio import path_inside
from .validation import validation_items


@dataclass
class RunPlan:
    dataset: DatasetSpec
    train_samples: list[Sample]
    reg_samples: list[Sample]
    batches_per_epoch: int
    total_steps: int  # optimizer steps
    epochs: int
    output_dir: Path
    run_dir: Path
    checked: PreflightReport | None = None  # the pre-flight this plan was made from
    val_samples: list[Sample] = field(default_factory=list)  # held out for the validation loss

    def epoch_file(self, name: str, epoch: int) -> Path:
        return path_inside(self.output_dir, f"{name}-{epoch:06d}.safetensors")

    def final_file(self, name: str) -> Path:
        return path_inside(self.output_dir, f"{name}.safetensors")

    @property
    def dataset_dirs(self) -> dict:
        return {s.path.name: {"n_repeats": s.repeats, "img_count": len(s.items)} for s in self.dataset.subsets}

    @property
    def tag_frequency(self) -> dict:
        return tag_frequency(self.dataset)

    @property
    def bucket_info(self) -> dict:
        counts: dict[str, int] = {}
        for sample in self.train_samples:
            key = f"{sample.bucket[0]}x{sample.bucket[1]}"
            counts[key] = counts.get(key, 0) + sample.item.repeats
        return {"buckets": counts}


def make_plan(config: TrainConfig, resuming: bool = False, checked: PreflightReport | None = None,
              world_size: int = 1) -> RunPlan:
    """The run's plan; `checked` is the pre-flight the caller ran before loading the model (run here if None).
    `world_size` processes (torchrun) each take batch_size images of every global batch."""
    d, t = config.data, config.train
    checked = checked if checked is not None else preflight_for(config)
    dataset = checked.spec
    if not dataset.train_items:
        raise DatasetError(f"{d.train_dir} has no training images (only class images). "
                           "Put training images in <repeats>_<name>/ subfolders.")
    caption_extensions = (d.caption_extension,) + tuple(e for e in (".txt", ".caption") if e != d.caption_extension)
    train_items, val_items = validation_items(config, dataset.train_items, caption_extensions)
    train_samples = plan_samples(train_items, d.resolution, d.bucketing, d.bucket_step, checked.sizes)
    val_samples = plan_samples(val_items, d.resolution, d.bucketing, d.bucket_step, checked.sizes)
    reg_samples = plan_samples(dataset.reg_items, d.resolution, d.bucketing, d.bucket_step, checked.sizes)
    batches, total_steps, epochs = count_steps(_bucket_sizes(train_samples), t.batch_size * world_size,
                                               t.grad_accumulation, t.epochs, t.max_steps)
    output_dir = Path(config.output.output_dir)
    run_dir = Path(config.output.runs_dir) if config.output.runs_dir else output_dir / "lora_studio_runs"
    plan = RunPlan(dataset, train_samples, reg_samples, batches, total_steps, epochs,
                   output_dir, run_dir / config.output.name, checked, val_samples)
    if not resuming:
        _refuse_overwrite(plan, config)
    return plan


def preflight_for(config: TrainConfig, on_progress=None) -> PreflightReport:
    """The pre-flight of a run's dataset (data/preflight.py): what it trains on, what it leaves out.

    Every entry point calls this once, before the model is loaded or touched."""
    d = config.data
    return preflight(Path(d.train_dir), Path(d.reg_dir) if d.reg_dir else None,
                     (d.caption_extension,) + tuple(e for e in (".txt", ".caption") if e != d.caption_extension),
                     strict=d.strict, on_progress=on_progress)


def count_steps(bucket_sizes: list[int], batch_size: int, grad_accumulation: int, epochs: int,
                max_steps: int) -> tuple[int, int, int]:
    """(batches per epoch, optimizer steps, epochs) from the samples per bucket (repeats included).

    Pure, so the WebUI's estimate counts steps exactly as the run will without decoding any image.
    """
    batches = max(1, sum(math.ceil(n / batch_size) for n in bucket_sizes))
    if max_steps > 0:
        return batches, max_steps, math.ceil(max_steps * grad_accumulation / batches)
    return batches, math.ceil(epochs * batches / grad_accumulation), epochs


def _bucket_sizes(samples: list[Sample]) -> list[int]:
    sizes: dict[tuple[int, int], int] = {}
    for sample in samples:
        sizes[sample.bucket] = sizes.get(sample.bucket, 0) + sample.item.repeats
    return list(sizes.values())


def _refuse_overwrite(plan: RunPlan, config: TrainConfig) -> None:
    final = plan.final_file(config.output.name)
    if final.exists() and not config.output.overwrite:
        raise SettingsError(
            f"{final} already exists. Choose another output name, or allow overwriting "
            "(output.overwrite = true / --overwrite)."
        )
