"""Teach a concept (`concepts.py`: the instance "a sks circle" or the star "a sks shape") through the engine's own
`train()`, then score it.

The dataset is a kohya project folder as the Dataset tab makes it (`img/1_sks circle/`, 64x64 PNGs: the
32x32 world upscaled 2x nearest, which the adapter's 2x box "VAE" turns back into the exact world pixels;
class images in `reg/1_circle/`, made by the Dataset tab's own class-image code with the base model as the
generator), so the run takes the same code path as the CLI and the WebUI: folder scan, latent cache,
LoRA attach, optimizer, prior-preservation loss, saving. The methods are in `methods.py`, the scores in
`metrics.py`; runs go to worker processes (`run_lines`).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lib_training.demo import world
from lib_training.demo.base_model import CFG, QualityAdapter, load_base, model_from_tensors, sample
from lib_training.demo.judge import load_judge
from lib_training.config import TrainConfig
from lib_training.data.importer import REG_DIRNAME, TRAIN_DIRNAME
from lib_training.lora.io import load_lora
from lib_training.train.full import METHOD as FULL
from lib_training.train.loop import train
from lib_training.webui.dataset.class_images import ClassImageSettings, GenerationRequest, generate_class_images
from concepts import TRIGGER, Concept
from methods import Method
from metrics import EvalSizes, Scores, lora_network, score, score_network, score_parts

CONCEPT_IMAGES = 8


def _png(pixels: np.ndarray) -> Image.Image:
    """(32, 32, 3) uint8 -> the 64x64 image the dataset holds."""
    return Image.fromarray(pixels).resize((world.SIZE * 2, world.SIZE * 2), Image.NEAREST)


def concept_caption(concept: Concept, scene: world.Scene, index: int) -> str:
    """Half the captions name the background, as a user's captions describe what is not the concept."""
    return concept.prompt if index % 2 == 0 else f"{concept.prompt} on a {scene.background} background"


def write_dataset(root: Path, model: QualityAdapter, concept: Concept, class_images: str = "",
                  n: int = CONCEPT_IMAGES, seed: int = 7, class_per_image: int = 4) -> Path:
    """A kohya project folder: n images of the concept (random size/position/background) + class images if asked."""
    rng = np.random.default_rng(seed)
    folder = root / TRAIN_DIRNAME / f"1_{TRIGGER} {concept.class_word}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene = world.random_scene(rng, (concept.shape,), (concept.colour,), fills=(concept.fill,))
        _png(world.render(scene)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(concept_caption(concept, scene, i), encoding="utf-8")
    if class_images:
        # "prompt": the concept's class prompt ("a circle"), the words leakage is measured with; left empty the
        # Dataset tab would draw from the bare class word ("circle"), which the evaluated prompt never says.
        settings = ClassImageSettings(class_word=concept.class_word, trigger=TRIGGER, from_captions=class_images == "captions",
                                      prompt=concept.class_prompt if class_images == "prompt" else "",
                                      per_image=class_per_image, steps=20, cfg_scale=CFG, width=64, height=64,
                                      seed=11, batch_size=32)
        result = generate_class_images(root, settings, base_model_generator(model))
        if not result.complete:
            raise RuntimeError(result.message())
    return root


class Datasets:
    """One dataset folder per concept and class-image source, written on first use (class images take a while)."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, str], Path] = {}

    def get(self, work: Path, model: QualityAdapter, m: Method, concept: Concept) -> Path:
        key = (concept.name, m.class_images)
        if key not in self._made:
            self._made[key] = write_dataset(work / f"data-{concept.name}-{m.class_images or 'plain'}", model,
                                            concept, m.class_images, class_per_image=m.class_per_image)
        return self._made[key]


def base_model_generator(model: QualityAdapter):
    """The Dataset tab's `Generate` callable, drawing with the base model (DDIM, CFG as requested)."""
    def generate(request: GenerationRequest) -> list[Image.Image]:
        images = sample(model, [request.prompt] * len(request.seeds), request.seeds, request.steps, request.cfg_scale)
        pixels = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        return [_png(p) for p in pixels]
    return generate


def steps_per_epoch(m: Method, n: int = CONCEPT_IMAGES) -> int:
    return math.ceil(n / m.batch_size)


def engine_config(m: Method, dataset: Path, out: Path, seed: int, save_every_steps: int = 0) -> TrainConfig:
    """The engine's settings for method `m`; `save_every_steps` > 0 also keeps a file every that many steps."""
    c = TrainConfig()
    c.data.train_dir = str(dataset / TRAIN_DIRNAME)
    c.data.reg_dir = str(dataset / REG_DIRNAME) if m.prior else ""
    c.data.prior_loss_weight = m.prior_loss_weight
    c.data.resolution, c.data.bucketing, c.data.flip = world.SIZE * 2, False, False
    c.network.rank, c.network.alpha, c.network.train_text_encoder = m.rank, m.alpha, m.train_text_encoder
    c.network.conv_rank, c.network.conv_alpha = m.conv_rank, m.conv_alpha
    c.optimizer.unet_lr = m.unet_lr
    c.optimizer.text_encoder_lr = m.text_encoder_lr if m.train_text_encoder else 0.0
    c.optimizer.scheduler, c.optimizer.restarts, c.optimizer.warmup_steps = m.scheduler, m.restarts, m.warmup_steps
    c.train.max_steps, c.train.batch_size, c.train.seed = m.steps, m.batch_size, seed
    c.train.mixed_precision = "no"
    c.train.min_snr_gamma = m.min_snr_gamma
    per_epoch = steps_per_epoch(m)
    if save_every_steps and save_every_steps % per_epoch:
        raise ValueError(f"save_every_steps {save_every_steps} is not a whole number of epochs ({per_epoch} steps)")
    c.train.save_every_epochs = save_every_steps // per_epoch
    c.output.output_dir, c.output.name, c.output.save_dtype = str(out), f"{m.name}_s{seed}", "fp32"
    c.output.overwrite, c.output.runs_dir = True, str(out / "runs")
    if m.full:  # the toy's checkpoint is written in its fixture's layout (QualityAdapter.original_layout_state_dict)
        c.network.method = FULL
        c.output.extract_lora_rank, c.output.extract_lora_dir = m.extract_rank, str(out / "Lora")
    return c

def train_lora(model: QualityAdapter, m: Method, dataset: Path, out: Path, seed: int,
               save_every_steps: int = 0) -> tuple[list[Path], float]:
    """Trains through the engine; returns the files (every `save_every_steps`, then the final one) and seconds.
    A full fine-tune's files are checkpoints (`model_from_tensors` reads them)."""
    files, _, seconds = train_run(model, m, dataset, out, seed, save_every_steps)
    return files, seconds


def train_run(model: QualityAdapter, m: Method, dataset: Path, out: Path, seed: int,
              save_every_steps: int = 0) -> tuple[list[Path], Path | None, float]:
    """`train_lora`, and the LoRA a full fine-tune extracted (None without one)."""
    started = time.monotonic()
    result = train(engine_config(m, dataset, out, seed, save_every_steps), model)
    return result.files, result.extracted_lora, time.monotonic() - started



@dataclass(frozen=True)
class Line:
    """One training run, scored at each of `steps` (files kept along the way; the last is the run's end)."""

    method: Method
    concept: Concept
    dataset: Path
    out: Path
    seed: int
    steps: tuple[int, ...]
    sizes: EvalSizes
    base_seen: torch.Tensor | None
    ablate: bool = False  # also score the final file with each part switched off (Scores.extra)


def run_line(line: Line) -> list[tuple[int, Scores]]:
    """(step, scores) per kept file; runs in a worker process with its own model (one torch thread)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    model, judge = load_base(), load_judge()
    every = reduce(math.gcd, line.steps) if len(line.steps) > 1 else 0
    files, extracted, seconds = train_run(model, line.method, line.dataset, line.out, line.seed, every)
    results = []
    for path in files:
        tensors, meta = load_lora(path)
        step = int(meta["ss_steps"])
        if step in line.steps:
            scores = score_file(model, judge, line, tensors, str(path), last=path == files[-1])
            scores.train_seconds = seconds
            if extracted is not None and path == files[-1]:
                scores.extra |= score_extracted(model, judge, line, extracted)
            results.append((step, scores))
            m = line.method
            print(f"[{time.strftime('%H:%M:%S')}] {line.concept.name} {m.name} lr {m.unet_lr:g} seed {line.seed} step {step}: fidelity "
                  f"{scores.fidelity:.3f} seen {scores.seen_accuracy:.3f} leakage {scores.leakage:.3f} "
                  f"(train {seconds:.0f}s)", flush=True)
    return results


def score_file(model: QualityAdapter, judge, line: Line, tensors: dict[str, torch.Tensor], source: str,
               last: bool) -> Scores:
    """Scores of one kept file: a full fine-tune's checkpoint loaded as a model of its own, a LoRA on the base
    (the run's `last` one also with each part switched off, when the line ablates)."""
    if line.method.full:
        return score(model_from_tensors(tensors), judge, line.sizes, line.base_seen, line.concept)[0]
    network = lora_network(model, tensors, line.method, source)
    scores = score_network(model, judge, network, line.sizes, line.base_seen, line.concept)
    if line.ablate and last:
        scores.extra = score_parts(model, judge, network, tensors, line.sizes, line.base_seen, line.concept)
    return scores


def score_extracted(model: QualityAdapter, judge, line: Line, path: Path) -> dict[str, dict]:
    """{"extracted LoRA rank r": scores} of the LoRA the engine extracted from a full fine-tune, on the base."""
    m = line.method
    shape = replace(m, full=False, rank=m.extract_rank, alpha=float(m.extract_rank), conv_rank=0)
    tensors, _ = load_lora(path)
    s = score_network(model, judge, lora_network(model, tensors, shape, str(path)), line.sizes, line.base_seen,
                      line.concept)
    return {f"extracted LoRA rank {m.extract_rank}": {"fidelity": s.fidelity, "seen_accuracy": s.seen_accuracy,
                                                       "leakage": s.leakage, "pixel_change": s.pixel_change}}


def line_cost(line: Line) -> int:
    """Relative training time: steps, twice over with class images (each step adds a class batch)."""
    return line.method.steps * (2 if line.method.prior else 1)


def base_scores(sizes: EvalSizes, concept: Concept) -> tuple[Scores, torch.Tensor | None]:
    """`score` of the base model without a LoRA, in a worker process of its own (one torch thread)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    return score(load_base(), load_judge(), sizes, None, concept)


def run_lines(lines: list[Line], jobs: int) -> list[list[tuple[int, Scores]]]:
    """`run_line` for each, `jobs` at a time (processes: one torch thread each beats threads on 2 cores).

    The longest runs start first, so the workers finish together; results come back in `lines` order.
    """
    return _run_pool(lines, jobs, None)[0]


def run_lines_and_base(lines: list[Line], jobs: int, base_sizes: EvalSizes,
                       concepts: list[Concept]) -> tuple[list, list[Scores]]:
    """`run_lines`, and the base model scored for each of `concepts` on the first free worker (its seen
    images are not kept, so the lines' pixel change reads 0)."""
    return _run_pool(lines, jobs, base_sizes, concepts)


def _run_pool(lines: list[Line], jobs: int, base_sizes: EvalSizes | None,
              concepts: list[Concept] = ()) -> tuple[list, list[Scores]]:
    order = sorted(range(len(lines)), key=lambda i: -line_cost(lines[i]))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {i: pool.submit(run_line, lines[i]) for i in order}
        bases = [pool.submit(base_scores, base_sizes, c) for c in concepts] if base_sizes is not None else []
        results = [futures[i].result() for i in range(len(lines))]
    return results, [b.result()[0] for b in bases]
