"""Teach the held-out concept ("a sks shape" = blue star) through the engine's own `train()`, then score it.

The dataset is a kohya project folder as the Dataset tab makes it (`img/1_sks shape/`, 64x64 PNGs: the
32x32 world upscaled 2x nearest, which the adapter's 2x box "VAE" turns back into the exact world pixels;
class images in `reg/1_shape/`, made by the Dataset tab's own class-image code with the base model as the
generator), so the run takes the same code path as the CLI and the WebUI: folder scan, latent cache,
LoRA attach, optimizer, prior-preservation loss, saving.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import reduce
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import world
from base_model import CFG, QualityAdapter, load_base, sample
from judge import Judge, load_judge
from lib_training.config import TrainConfig
from lib_training.data.importer import REG_DIRNAME, TRAIN_DIRNAME
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape
from lib_training.train.loop import train
from lib_training.webui.class_images import ClassImageSettings, GenerationRequest, generate_class_images
from lib_training.webui.presets import PRESET_BATCH, PRESET_EPOCHS, TARGET_SAMPLES_PER_EPOCH, find_preset
from metrics import SeenAccuracy, fraction, seen_accuracy

CONCEPT_SHAPE, CONCEPT_COLOUR = "star", "blue"
TRIGGER, CLASS_WORD = "sks", "shape"
CONCEPT_PROMPT = f"a {TRIGGER} {CLASS_WORD}"
CLASS_PROMPT = f"a {CLASS_WORD}"
CONCEPT_IMAGES = 8
CLASS_SOURCES = ("", "prompt", "captions")  # no class images / from the class prompt / from each caption


@dataclass(frozen=True)
class Method:
    """How one method trains: which parts, learning rates, class images (prior preservation)."""

    name: str
    train_text_encoder: bool
    class_images: str = ""  # one of CLASS_SOURCES
    unet_lr: float = 1e-3
    text_encoder_lr: float = 1e-3
    rank: int = 8
    alpha: float = 8.0
    conv_rank: int = 0  # > 0: also the ResnetBlock2D 3x3 convs (LoCon); the UNet attention is only at 8x8
    conv_alpha: float = 8.0
    steps: int = 300
    batch_size: int = 4
    prior_loss_weight: float = 1.0
    min_snr_gamma: float = 0.0
    scheduler: str = "constant"
    restarts: int = 1
    warmup_steps: int = 0
    class_per_image: int = 4  # class images per training image

    @property
    def prior(self) -> bool:
        return bool(self.class_images)


# The presets' values carry over as they are (text encoder on/off and its lr relative to the UNet's,
# alpha/rank, min-SNR, prior-loss weight, scheduler); what is the toy world's own (its UNet is ~700x
# smaller than SD 1.5's and works in pixel space) is below, found with sweep_quality.py (README).
BENCH_PRESET = "object"
LR_FACTOR = 8.0  # toy learning rate = the preset's x this
STEPS = 400
RANK = 8
CONV_RANK = 8  # the toy UNet attends only at 8x8: its shapes are drawn by the 3x3 convs
PRESET_STEPS = sum(TARGET_SAMPLES_PER_EPOCH) // 2 // PRESET_BATCH * PRESET_EPOCHS  # what a preset run takes


def preset_method(name: str, train_text_encoder: bool, class_images: str, preset: str = BENCH_PRESET) -> Method:
    """A method with the Train tab preset's choices, on the toy world's scale."""
    v = find_preset(preset).values
    alpha_ratio = v["network.alpha"] / v["network.rank"]
    return Method(name, train_text_encoder, class_images, unet_lr=v["optimizer.unet_lr"] * LR_FACTOR,
                  text_encoder_lr=v["optimizer.text_encoder_lr"] * LR_FACTOR, rank=RANK, alpha=RANK * alpha_ratio,
                  conv_rank=CONV_RANK, conv_alpha=CONV_RANK * alpha_ratio, steps=STEPS,
                  prior_loss_weight=v["data.prior_loss_weight"], min_snr_gamma=v["train.min_snr_gamma"],
                  scheduler=v["optimizer.scheduler"], restarts=v["optimizer.restarts"],
                  warmup_steps=round(STEPS * v["optimizer.warmup_steps"] / PRESET_STEPS))


# The ablation: the preset as a plain LoRA (UNet only, then + text encoder), then as DreamBooth-LoRA with
# class images drawn from the class prompt or from each training caption (the default).
METHODS: dict[str, Method] = {
    "lora": preset_method("lora", train_text_encoder=False, class_images=""),
    "lora_te": preset_method("lora_te", train_text_encoder=True, class_images=""),
    "dreambooth_lora_prompt": preset_method("dreambooth_lora_prompt", train_text_encoder=True, class_images="prompt"),
    "dreambooth_lora": preset_method("dreambooth_lora", train_text_encoder=True, class_images="captions"),
}
DEFAULT_METHOD = "dreambooth_lora"


def method(name: str, **overrides) -> Method:
    return replace(METHODS[name], **overrides)


def scaled_alphas(m: Method, fixed: dict) -> dict:
    """Alphas for a changed rank that keep the method's alpha/rank (the preset's)."""
    out = {}
    if "rank" in fixed:
        out["alpha"] = fixed["rank"] * m.alpha / m.rank
    if "conv_rank" in fixed:
        out["conv_alpha"] = fixed["conv_rank"] * (m.conv_alpha / m.conv_rank if m.conv_rank else m.alpha / m.rank)
    return out


def _png(pixels: np.ndarray) -> Image.Image:
    """(32, 32, 3) uint8 -> the 64x64 image the dataset holds."""
    return Image.fromarray(pixels).resize((world.SIZE * 2, world.SIZE * 2), Image.NEAREST)


def concept_caption(scene: world.Scene, index: int) -> str:
    """Half the captions name the background, as a user's captions describe what is not the concept."""
    return CONCEPT_PROMPT if index % 2 == 0 else f"{CONCEPT_PROMPT} on a {scene.background} background"


def write_dataset(root: Path, model: QualityAdapter, class_images: str = "", n: int = CONCEPT_IMAGES,
                  seed: int = 7, class_per_image: int = 4) -> Path:
    """A kohya project folder: n blue stars (random size/position/background) + class images if asked."""
    rng = np.random.default_rng(seed)
    folder = root / TRAIN_DIRNAME / f"1_{TRIGGER} {CLASS_WORD}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene = world.random_scene(rng, (CONCEPT_SHAPE,), (CONCEPT_COLOUR,))
        _png(world.render(scene)).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(concept_caption(scene, i), encoding="utf-8")
    if class_images:
        settings = ClassImageSettings(class_word=CLASS_WORD, trigger=TRIGGER, from_captions=class_images == "captions",
                                      per_image=class_per_image, steps=20, cfg_scale=CFG, width=64, height=64,
                                      seed=11, batch_size=32)
        result = generate_class_images(root, settings, base_model_generator(model))
        if not result.complete:
            raise RuntimeError(result.message())
    return root


class Datasets:
    """One dataset folder per class-image source, written on first use (class images take a while)."""

    def __init__(self) -> None:
        self._made: dict[str, Path] = {}

    def get(self, work: Path, model: QualityAdapter, m: Method) -> Path:
        if m.class_images not in self._made:
            self._made[m.class_images] = write_dataset(work / f"data-{m.class_images or 'plain'}", model,
                                                       m.class_images, class_per_image=m.class_per_image)
        return self._made[m.class_images]


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
    return c


@dataclass
class Scores:
    fidelity: float  # 'a sks shape' read as a blue star
    seen_accuracy: float  # 'a <colour> <seen shape>' right in shape and colour
    leakage: float  # 'a shape' read as a star
    pixel_change: float  # mean |diff| of same-seed seen-prompt images vs the base, in [0, 1] units
    train_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class EvalSizes:
    per_seen_prompt: int = 4  # 0: no seen-prompt samples (accuracy and pixel change read 0)
    concept: int = 32
    leakage: int = 32
    steps: int = 20


def score(model: QualityAdapter, judge: Judge, sizes: EvalSizes, base_seen: torch.Tensor | None,
          seed: int = 1) -> tuple[Scores, torch.Tensor | None]:
    if sizes.per_seen_prompt:
        acc, seen_images = seen_accuracy(model, judge, sizes.per_seen_prompt, seed, sizes.steps)
    else:
        acc, seen_images = SeenAccuracy(0.0, 0.0, 0.0, 0), None
    fid, _ = fraction(model, judge, CONCEPT_PROMPT, sizes.concept, seed + 1, CONCEPT_SHAPE, CONCEPT_COLOUR,
                      sizes.steps)
    leak, _ = fraction(model, judge, CLASS_PROMPT, sizes.leakage, seed + 2, CONCEPT_SHAPE, None, sizes.steps)
    change = float((seen_images - base_seen).abs().mean() / 2) if seen_images is not None and base_seen is not None \
        else 0.0
    return Scores(fid, acc.both, leak, change), seen_images


def train_lora(model: QualityAdapter, m: Method, dataset: Path, out: Path, seed: int,
               save_every_steps: int = 0) -> tuple[list[Path], float]:
    """Trains through the engine; returns the files (every `save_every_steps`, then the final one) and seconds."""
    started = time.monotonic()
    result = train(engine_config(m, dataset, out, seed, save_every_steps), model)
    return result.files, time.monotonic() - started


def lora_network(model: QualityAdapter, tensors: dict[str, torch.Tensor], m: Method, source: str) -> LoraNetwork:
    """A network holding the kohya `tensors` (read from `source`); sample with it through `score_network`."""
    network = LoraNetwork.for_model(model, NetworkShape(m.rank, m.alpha, m.conv_rank, m.conv_alpha, m.train_text_encoder))
    network.load_kohya_state_dict(tensors, source=source)
    return network.eval()


def score_network(model: QualityAdapter, judge: Judge, network: LoraNetwork, sizes: EvalSizes,
                  base_seen: torch.Tensor | None) -> Scores:
    with network.merged():  # sampling: merged weights are a third faster than hooks
        scores, _ = score(model, judge, sizes, base_seen)
    return scores


# The parts of a kohya file, by key: the ablation scores a file with one of them switched off
# (its lora_up zeroed) to tell which part teaches the concept and which one makes the model drift.
PARTS = {
    "text encoder": lambda key: key.startswith("lora_te"),
    "UNet attention": lambda key: key.startswith("lora_unet_") and "_attentions_" in key,
    "UNet convs": lambda key: key.startswith("lora_unet_") and "_attentions_" not in key,
}


def without_part(tensors: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The LoRA `tensors` with `part` (a PARTS key) switched off."""
    chosen = PARTS[part]
    return {k: torch.zeros_like(v) if chosen(k) and k.endswith("lora_up.weight") else v for k, v in tensors.items()}


def score_parts(model: QualityAdapter, judge: Judge, network: LoraNetwork, tensors: dict[str, torch.Tensor],
                sizes: EvalSizes, base_seen: torch.Tensor | None) -> dict[str, dict]:
    """Scores of the file (`tensors`, loaded in `network`) with each part it has switched off in turn:
    {"without <part>": scores}. Leaves `network` holding the last of them."""
    out = {}
    for part, chosen in PARTS.items():
        if any(chosen(k) for k in tensors):
            network.load_kohya_state_dict(without_part(tensors, part))
            s = score_network(model, judge, network, sizes, base_seen)
            out[f"without {part}"] = {"fidelity": s.fidelity, "seen_accuracy": s.seen_accuracy, "leakage": s.leakage}
    return out


@dataclass(frozen=True)
class Line:
    """One training run, scored at each of `steps` (files kept along the way; the last is the run's end)."""

    method: Method
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
    files, seconds = train_lora(model, line.method, line.dataset, line.out, line.seed, every)
    results = []
    for path in files:
        tensors, meta = load_lora(path)
        step = int(meta["ss_steps"])
        if step in line.steps:
            network = lora_network(model, tensors, line.method, str(path))
            scores = score_network(model, judge, network, line.sizes, line.base_seen)
            scores.train_seconds = seconds
            if line.ablate and path == files[-1]:
                scores.extra = score_parts(model, judge, network, tensors, line.sizes, line.base_seen)
            results.append((step, scores))
            m = line.method
            print(f"[{time.strftime('%H:%M:%S')}] {m.name} lr {m.unet_lr:g} seed {line.seed} step {step}: fidelity "
                  f"{scores.fidelity:.3f} seen {scores.seen_accuracy:.3f} leakage {scores.leakage:.3f} "
                  f"(train {seconds:.0f}s)", flush=True)
    return results


def line_cost(line: Line) -> int:
    """Relative training time: steps, twice over with class images (each step adds a class batch)."""
    return line.method.steps * (2 if line.method.prior else 1)


def base_scores(sizes: EvalSizes) -> tuple[Scores, torch.Tensor | None]:
    """`score` of the base model without a LoRA, in a worker process of its own (one torch thread)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    return score(load_base(), load_judge(), sizes, None)


def run_lines(lines: list[Line], jobs: int) -> list[list[tuple[int, Scores]]]:
    """`run_line` for each, `jobs` at a time (processes: one torch thread each beats threads on 2 cores).

    The longest runs start first, so the workers finish together; results come back in `lines` order.
    """
    return _run_pool(lines, jobs, None)[0]


def run_lines_and_base(lines: list[Line], jobs: int, base_sizes: EvalSizes) -> tuple[list, Scores]:
    """`run_lines`, and the base model scored on the first free worker (its seen images are not kept, so
    the lines' pixel change reads 0)."""
    return _run_pool(lines, jobs, base_sizes)


def _run_pool(lines: list[Line], jobs: int, base_sizes: EvalSizes | None) -> tuple[list, Scores | None]:
    order = sorted(range(len(lines)), key=lambda i: -line_cost(lines[i]))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {i: pool.submit(run_line, lines[i]) for i in order}
        base = pool.submit(base_scores, base_sizes) if base_sizes is not None else None
        results = [futures[i].result() for i in range(len(lines))]
    return results, (base.result()[0] if base is not None else None)
