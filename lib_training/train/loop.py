"""The training loop: one `train()` for the WebUI, the CLI and the tests."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.captions import process_caption
from ..data.dataset import LatentCache, Sample, epoch_batches, size_conditioning
from ..data.preflight import PreflightReport
from ..errors import CheckpointError, SettingsError, TrainingCancelled, TrainingError
from ..fileio import atomic_write_text, remove_temp_files
from ..lora.io import save_lora
from ..lora.metadata import RunFacts, build_metadata
from ..lora.network import LoraNetwork, NetworkShape
from ..models.adapter import ModelAdapter, SizeConditioning
from ..models.conditioning import split_rows, stack_rows
from ..seeding import derived_seed, generator
from . import events as ev
from . import validation as val
from . import validation_log as val_log
from .cpu_autocast import cuda_like_norms
from .cpu_tuning import tuned_layers
from .distributed import Ranks, any_rank, current, share_latents, sum_gradients, summed
from .full import FullFineTune, check_extract_target, is_full, write_checkpoint, write_extracted_lora
from .fp8_layers import fp8_upcast
from .guard import frozen, gradient_checkpointing
from .loss import add_noise, min_snr_weights, per_sample_mse, sample_noise, target_for
from .optim import build_optimizer
from .plan import RunPlan, make_plan
from .precision import choose_precision, grad_scaler
from .run_stats import RunStats
from .schedule import build_scheduler
from .state import STATE_FILE, ResumeState, load_state, save_state

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
LOG_FILE = "log.jsonl"
# Out of memory: CUDA's error (torch.OutOfMemoryError in newer PyTorch) and the CPU's.
OUT_OF_MEMORY = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError,
                 MemoryError)


@dataclass
class NoisedBatch:
    """One micro-batch ready for the model: noised latents, their timesteps, captions and the loss target."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    captions: list[str]
    target: torch.Tensor
    sizes: list[SizeConditioning] = field(default_factory=list)  # SDXL's size/crop conditioning

    def rows(self, rows: slice) -> NoisedBatch:
        """One rank's slice of a global batch (train/distributed.py)."""
        return NoisedBatch(self.noisy[rows], self.timesteps[rows], self.captions[rows], self.target[rows],
                           self.sizes[rows])

    @staticmethod
    def joined(parts: list[NoisedBatch]) -> NoisedBatch:
        return NoisedBatch(torch.cat([p.noisy for p in parts]), torch.cat([p.timesteps for p in parts]),
                           [c for p in parts for c in p.captions], torch.cat([p.target for p in parts]),
                           [s for p in parts for s in p.sizes])


@dataclass
class TrainResult:
    path: Path
    files: list[Path]
    steps: int
    seconds: float
    final_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    extracted_lora: Path | None = None  # method "full" with output.extract_lora_rank
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss), when asked


def train(config: TrainConfig, model: ModelAdapter, on_event: ev.EventSink | None = None,
          cancel: ev.CancelToken | None = None, resume: bool = False,
          checked: PreflightReport | None = None) -> TrainResult:
    """Train a LoRA on `model` as `config` says; the model is left exactly as found.

    `checked` is the pre-flight the caller ran (and showed) before loading the model; without it the
    pre-flight runs here and its listing of left-out files comes as a Message."""
    config.validate()
    ranks = current()  # torchrun: one rank of several (train/distributed.py)
    plan = make_plan(config, resuming=resume, checked=checked, world_size=ranks.world_size)
    if checked is None and plan.checked.left_out:
        (on_event or (lambda event: None))(ev.Message(plan.checked.format_text()))
    state = load_state(plan.run_dir) if resume else None
    if state is not None:
        _check_resumable(state, config, plan)
    elif not resume:
        check_extract_target(config)
    emit = on_event if on_event is not None and ranks.is_main else (lambda event: None)
    trainer = _Trainer(config, model, plan, emit, cancel or ev.CancelToken(), ranks)
    return trainer.run(state)


def _check_resumable(state: ResumeState, config: TrainConfig, plan: RunPlan) -> None:
    saved = TrainConfig.from_dict(_toml_loads(state.config_toml), source="the saved run")
    if saved.network != config.network or saved.train.seed != config.train.seed:
        raise SettingsError("The saved run used other network settings or another seed; resume it with the "
                            f"settings in {plan.run_dir / 'config.toml'}, or start a new run.")
    if state.step >= plan.total_steps and plan.final_file(config.output.name).exists():
        raise SettingsError(f"The saved run already finished its {plan.total_steps} steps; nothing to resume.")


def _toml_loads(text: str) -> dict:
    from ..config import tomllib

    return tomllib.loads(text)


class _Trainer:
    def __init__(self, config: TrainConfig, model: ModelAdapter, plan: RunPlan, emit: ev.EventSink,
                 cancel: ev.CancelToken, ranks: Ranks = Ranks()):
        self.c, self.model, self.plan, self.emit, self.cancel_token = config, model, plan, emit, cancel
        self.ranks, self.writes = ranks, ranks.is_main  # only rank 0 writes files and logs
        if ranks.active and not config.data.cache_latents:
            raise SettingsError("Training on several processes needs cached latents (each rank draws the whole "
                                "global batch); remove --no-cache-latents / set data.cache_latents = true.")
        self.device = model.device
        self.precision = choose_precision(config.train.mixed_precision, self.device, model.unet(),
                                          model.text_encoder())
        self.autocast_dtype = self.precision.autocast
        images = config.train.batch_size * config.train.grad_accumulation * (2 if plan.reg_samples else 1)
        self.stats = RunStats.begin(self.device, images, self.precision.label, model.info.family)
        self.train_text_encoder = config.network.train_text_encoder and config.optimizer.text_encoder_lr > 0
        self.full = is_full(config)  # the weights themselves, not a LoRA (train/full.py)
        self.cond_cache: dict[str, torch.Tensor] | None = (
            {} if not self.train_text_encoder and not config.data.shuffle_captions
            and config.data.caption_dropout == 0 else None)
        self.losses: list[tuple[int, float]] = []
        self.validation: list[tuple[int, float]] = []  # (step, validation loss)
        self.files: list[Path] = []
        self.facts = RunFacts(started_at=time.time(), max_steps=plan.total_steps,
                              batches_per_epoch=plan.batches_per_epoch,
                              # kohya's meaning: images x repeats (what Civitai and kohya's tools read)
                              num_train_images=plan.dataset.num_train_samples,
                              num_reg_images=plan.dataset.num_reg_samples,
                              dataset_dirs=plan.dataset_dirs, tag_frequency=plan.tag_frequency,
                              bucket_info=plan.bucket_info,
                              mixed_precision=self.precision.label)

    # ---- set-up -------------------------------------------------------------------------
    def run(self, state: ResumeState | None) -> TrainResult:
        base_modules = [self.model.unet(), self.model.text_encoder()]
        with self.model.prepared_for_training(), frozen(base_modules), contextlib.ExitStack() as stack:
            self.network = self._make_network()
            stack.enter_context(self.network.attached())
            stack.enter_context(gradient_checkpointing(
                self.model.checkpoint_units(), self.c.train.gradient_checkpointing))
            stack.enter_context(fp8_upcast(base_modules))
            stack.enter_context(cuda_like_norms(base_modules, self.device.type == "cpu"
                                                and self.autocast_dtype is not None))
            # fp32 on the CPU only: CUDA's libraries pick their own kernels well.
            stack.enter_context(tuned_layers(base_modules, enabled=self.device.type == "cpu"
                                             and self.autocast_dtype is None and not self.precision.fp8,
                                             persist=self.c.train.deterministic))
            self.validator = val.make_validator(self.c, self.plan.val_samples, self.model)
            self.optimizer = self._make_optimizer()
            self.scheduler = build_scheduler(self.optimizer, self.c.optimizer, self.plan.total_steps)
            self.scaler = grad_scaler(self.precision, self.device)
            start_step = self._restore(state) if state else 0
            if self.writes:
                self.plan.run_dir.mkdir(parents=True, exist_ok=True)
                self._remove_leftovers()
                atomic_write_text(self.plan.run_dir / "config.toml", self.c.to_toml())
                self.plan.checked.write(self.plan.run_dir)
            self.step_done = start_step
            try:
                self.caches = self._make_caches(start_step)
                return self._loop(start_step)
            except OUT_OF_MEMORY as error:
                raise self._out_of_memory(error) from error

    def _remove_leftovers(self) -> None:
        """Temp files of this run's outputs that a killed process left (never a finished file: those were
        renamed into place)."""
        name = self.c.output.name
        for pattern in (f".{name}.safetensors.*.tmp", f".{name}-[0-9]*.safetensors.*.tmp"):
            remove_temp_files(self.plan.output_dir, pattern)
        remove_temp_files(self.plan.run_dir, ".*.tmp")

    def _make_network(self) -> LoraNetwork | FullFineTune:
        if self.full:
            return FullFineTune(self.model, self.train_text_encoder)
        n = self.c.network
        shape = NetworkShape(n.rank, n.alpha, n.conv_rank, n.conv_alpha, n.train_text_encoder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.c.train.seed, "lora-init"))
            return LoraNetwork.for_model(self.model, shape)

    def _make_caches(self, start_step: int) -> tuple[LatentCache, LatentCache]:
        """Latent caches, filled now when asked; a cancel is honoured between two images."""
        d = self.c.data
        tag = f"{self.model.info.name}:{self.model.info.sha256 or self.model.info.legacy_hash}"
        caches = tuple(
            LatentCache(samples, self.model.encode_images, tag, self.c.train.seed,
                        to_disk=d.cache_latents_to_disk, keep_in_memory=d.cache_latents)
            for samples in (self.plan.train_samples, self.plan.reg_samples))
        if d.cache_latents:
            for cache in caches:
                if self.ranks.active:  # every rank encodes its share; a cancel is seen at the first step
                    share_latents(cache, d.flip, self.ranks, self.device)
                elif not cache.fill(flips=d.flip, should_stop=lambda: self.cancel_token.cancelled):
                    self._cancel_at(start_step)
        return caches

    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.c.optimizer
        groups = []
        if o.unet_lr > 0:
            groups.append({"params": self.network.unet_parameters(), "lr": o.unet_lr})
        else:
            for p in self.network.unet_parameters():
                p.requires_grad_(False)
        te_params = self.network.text_encoder_parameters()
        if self.train_text_encoder:
            groups.append({"params": te_params, "lr": o.text_encoder_lr})
        else:
            for p in te_params:
                p.requires_grad_(False)
        optimizer = build_optimizer(o, groups, self.device)
        if self.full:
            self.network.follow(optimizer)
        return optimizer

    def _restore(self, state: ResumeState) -> int:
        self.network.load_kohya_state_dict(state.lora, source="the saved run")
        self.optimizer.load_state_dict(state.optimizer)
        # The schedule function itself is rebuilt from the settings, not stored.
        self.scheduler.load_state_dict({**state.scheduler, "lr_lambdas": [None] * len(self.optimizer.param_groups)})
        self.losses = _read_log(self.plan.run_dir / LOG_FILE, upto=state.step)
        self.emit(ev.Message(f"Resuming at step {state.step} of {self.plan.total_steps}."))
        return state.step

    # ---- the loop -----------------------------------------------------------------------
    def _loop(self, start_step: int) -> TrainResult:
        t, plan, accum = self.c.train, self.plan, self.c.train.grad_accumulation
        self.emit(ev.Started(plan.total_steps, math.ceil(plan.batches_per_epoch / accum), plan.epochs,
                             plan.dataset.num_train_images, plan.dataset.num_reg_images, start_step))
        started = time.monotonic()
        self.stats.loop_started()
        step, pending, last_loss = start_step, [], float("nan")
        micro = step * accum
        self._truncate_log(step)
        self._start_validation(step)
        self._save_missing_epoch_file(step)
        while step < plan.total_steps:
            if self._stop_requested():
                self._cancel_at(step)
            for _ in range(accum):
                loss = self._micro_batch_loss(micro)
                self._backward(loss / accum)
                pending.append(loss.detach())
                micro += 1
            self._optimizer_step()
            step += 1
            self.step_done = step
            epoch_done = self._epoch_ended(micro, accum)
            if step % t.loss_readback_steps == 0 or step == plan.total_steps or epoch_done:
                last_loss = self._read_back(pending, step, started, start_step)
                pending = []
            epoch = micro // plan.batches_per_epoch
            if self.validator and self.validator.due(step, epoch_done, epoch, step == plan.total_steps):
                self._validate(step, epoch)
            if epoch_done and step < plan.total_steps:
                self._maybe_save_epoch(micro // plan.batches_per_epoch, step)
            # Every N steps, and once at the end so the last sample shows the final LoRA.
            if t.sample_every_steps and (step % t.sample_every_steps == 0 or step == plan.total_steps):
                self._request_samples(step)
        return self._finish(step, time.monotonic() - started, last_loss)

    def _save_missing_epoch_file(self, step: int) -> None:
        """A run resumed where its epoch file could not be written (a full disk) writes it first."""
        accum, name = self.c.train.grad_accumulation, self.c.output.name
        if 0 < step < self.plan.total_steps and self._epoch_ended(step * accum, accum):
            epoch = step * accum // self.plan.batches_per_epoch
            if not self.plan.epoch_file(name, epoch).exists():
                self._maybe_save_epoch(epoch, step)

    def _cancel_at(self, step: int) -> None:
        self._save_resume_state(step)
        if self.writes:
            self.stats.write(self.plan.run_dir)
        raise TrainingCancelled(f"Training cancelled at step {step} of {self.plan.total_steps}. "
                                f"Resume it later (state in {self.plan.run_dir}).")

    def _stop_requested(self) -> bool:
        cancelled = self.cancel_token.cancelled
        return any_rank(cancelled, self.device) if self.ranks.active else cancelled

    def _epoch_ended(self, micro: int, accum: int) -> bool:
        bpe = self.plan.batches_per_epoch
        return (micro // bpe) > ((micro - accum) // bpe)

    def _micro_batch_loss(self, micro: int) -> torch.Tensor:
        plan, d = self.plan, self.c.data
        epoch, offset = divmod(micro, plan.batches_per_epoch)
        global_batch = self.c.train.batch_size * self.ranks.world_size
        batch = epoch_batches(plan.train_samples, global_batch, self.c.train.seed, epoch)[offset]
        gen = generator(self.c.train.seed, "micro", micro)
        parts = [(1.0, self._noised_batch(plan.train_samples, self.caches[0], batch, gen))]
        if plan.reg_samples and d.prior_loss_weight > 0:
            reg_batches = epoch_batches(plan.reg_samples, global_batch, self.c.train.seed,
                                        epoch, use_repeats=False)
            reg_batch = reg_batches[micro % len(reg_batches)]
            parts.append((d.prior_loss_weight, self._noised_batch(plan.reg_samples, self.caches[1], reg_batch, gen)))
        if self.ranks.active:
            return self._rank_share_of_loss(parts)
        weights, batches = zip(*parts)
        # Instance and class images of one size go through the model as one batch (a quarter faster than
        # two passes on the CPU, and as kohya does); the loss is the same: mean + weight * mean.
        if len(batches) > 1 and len({b.noisy.shape[1:] for b in batches}) == 1:
            losses = self._losses(NoisedBatch.joined(list(batches))).split([len(b.timesteps) for b in batches])
        else:
            losses = [self._losses(b) for b in batches]
        return sum(w * l.mean() for w, l in zip(weights, losses))

    def _rank_share_of_loss(self, parts: list[tuple[float, NoisedBatch]]) -> torch.Tensor:
        """This rank's rows of each global batch; the shares of all ranks add up to the global loss."""
        total = torch.zeros((), device=self.device)
        for weight, batch in parts:
            rows = self.ranks.rows(self.c.train.batch_size, len(batch.timesteps))
            if rows.start < rows.stop:
                total = total + weight * self._losses(batch.rows(rows)).sum() / len(batch.timesteps)
        return total

    def _noised_batch(self, samples: list[Sample], cache: LatentCache, batch: list[int],
                      gen: torch.Generator) -> NoisedBatch:
        d, t = self.c.data, self.c.train
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=gen)))
        flips = [d.flip and rng.random() < 0.5 for _ in batch]
        latents = torch.stack([cache.get(i, f) for i, f in zip(batch, flips)]).to(self.device)
        captions = [process_caption(samples[i].item.caption, rng, d.shuffle_captions, d.keep_tokens,
                                    d.caption_dropout) for i in batch]
        timesteps = torch.randint(0, len(self.model.alphas_cumprod), (len(batch),), generator=gen).to(self.device)
        noise = sample_noise(latents, t.noise_offset, gen)
        alphas = self.model.alphas_cumprod
        target = target_for(self.model.info.prediction_type, latents, noise, timesteps, alphas)
        sizes = [size_conditioning(samples[i], f) for i, f in zip(batch, flips)]
        return NoisedBatch(add_noise(latents, noise, timesteps, alphas), timesteps, captions, target, sizes)

    def _losses(self, b: NoisedBatch) -> torch.Tensor:
        """Per-sample loss (min-SNR weighted when set)."""
        losses = per_sample_mse(self._predict(b.noisy, b.timesteps, b.captions, b.sizes), b.target)
        gamma = self.c.train.min_snr_gamma
        if gamma > 0:
            losses = losses * min_snr_weights(b.timesteps, self.model.alphas_cumprod, gamma,
                                              self.model.info.prediction_type)
        return losses

    def _predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, captions: list[str],
                 sizes: list[SizeConditioning]) -> torch.Tensor:
        with self._autocast():
            cond = self._conditioning(captions)
            return self.model.predict(noisy.to(self.precision.weights), timesteps, cond, sizes)

    def _start_validation(self, step: int) -> None:
        """A fresh run's log starts empty with the loss before training; a resumed one keeps its lines."""
        if self.validator:
            if self.writes:
                val_log.truncate_log(self.plan.run_dir, step)
            self.validation = val_log.read_log(self.plan.run_dir)
            if step == 0:
                self._validate(0, 0)

    def _validate(self, step: int, epoch: int) -> None:
        loss = self.validator.loss(self._predict)
        self.validation.append((step, loss))
        if self.writes:
            val_log.append_log(self.plan.run_dir, step, epoch, loss)
        self.emit(ev.Validated(step, epoch, loss))

    def _conditioning(self, captions: list[str]) -> torch.Tensor:
        if self.train_text_encoder:
            return self.model.encode_prompts(captions)
        if self.cond_cache is None:
            with torch.no_grad():
                return self.model.encode_prompts(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self.cond_cache]
        if missing:
            with torch.no_grad():
                for caption, cond in zip(missing, split_rows(self.model.encode_prompts(missing))):
                    self.cond_cache[caption] = cond
        return stack_rows([self.cond_cache[c] for c in captions])

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _backward(self, loss: torch.Tensor) -> None:
        if loss.requires_grad:  # a rank with no rows in this global batch has nothing to backpropagate
            (self.scaler.scale(loss) if self.scaler else loss).backward()

    def _optimizer_step(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.ranks.active:  # before unscaling, so every rank sees the same inf/NaN and skips alike
            sum_gradients(params)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.c.optimizer.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.c.optimizer.max_grad_norm, foreach=True)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---- reporting and files ------------------------------------------------------------
    def _read_back(self, pending: list[torch.Tensor], step: int, started: float, start_step: int) -> float:
        """One device->host copy for several steps; NaN/inf stops the run here."""
        stacked = torch.stack(pending).float()
        values = (summed(stacked) if self.ranks.active else stacked).cpu().tolist()
        accum = self.c.train.grad_accumulation
        first = step - len(values) // accum + 1
        per_step = [sum(values[i:i + accum]) / accum for i in range(0, len(values), accum)]
        for offset, value in enumerate(per_step):
            if not math.isfinite(value):
                self._stop_on_nan(first + offset - 1, value)
            self.losses.append((first + offset, value))
        if self.writes:
            self._append_log(self.losses[-len(per_step):])
        elapsed = time.monotonic() - started
        self.stats.mark(step - start_step, elapsed)
        done = step - start_step
        eta = elapsed / done * (self.plan.total_steps - step) if done else 0.0
        epoch = (step * accum) // self.plan.batches_per_epoch + 1
        mean = sum(per_step) / len(per_step)
        self.emit(ev.StepDone(step, self.plan.total_steps, min(epoch, self.plan.epochs), mean,
                              self.scheduler.get_last_lr()[0], elapsed, eta))
        return per_step[-1]

    def _stop_on_nan(self, step: int, value: float) -> None:
        kept = f" The last good file is {self.files[-1]}." if self.files else " No epoch had finished yet."
        raise TrainingError(
            f"The loss became {value} at step {step + 1}; training stopped.{kept} "
            "Lower the learning rate, use fp32 or bf16 instead of fp16, or turn on gradient clipping."
        )

    def _maybe_save_epoch(self, epoch: int, step: int) -> None:
        every = self.c.train.save_every_epochs
        if every and epoch % every == 0:
            path = self._save(self.plan.epoch_file(self.c.output.name, epoch), epoch, step)
            if not self.full:  # a LoRA's state is small: a run killed later resumes from here
                self._save_resume_state(step)
            self.emit(ev.EpochSaved(epoch, path))

    def _save(self, path: Path, epoch: int, step: int) -> Path:
        dtype = SAVE_DTYPES[self.c.output.save_dtype]
        tensors = None if self.full else self.network.kohya_state_dict(dtype)
        finite = self.network.all_finite() if self.full else all(torch.isfinite(v).all() for v in tensors.values())
        if not finite:
            self._stop_on_nan(step - 1, float("nan"))
        self.facts.epoch, self.facts.steps, self.facts.finished_at = epoch, step, time.time()
        self.facts.validation_loss = dict(self.validation).get(step)
        if self.writes:  # only rank 0 writes under torchrun
            try:
                if self.full:
                    write_checkpoint(path, self.model, self.network, self.c, self.facts, dtype)
                else:
                    save_lora(path, tensors, build_metadata(self.c, self.model.info, self.facts))
            except (OSError, CheckpointError) as error:  # a full disk, a folder gone: no partial file is left
                raise self._save_failed(path, step, error) from error
        self.files.append(path)
        return path

    def _save_failed(self, path: Path, step: int, error: Exception) -> TrainingError:
        kept = f" The last good file, {self.files[-1].name}, is intact." if self.files else ""
        return TrainingError(f"Saving {path.name} at step {step} failed: {error}.{kept}"
                             f"{self._resume_hint(step)}")

    def _out_of_memory(self, error: BaseException) -> TrainingError:
        step, detail = self.step_done, (str(error).splitlines() or [type(error).__name__])[0]
        return TrainingError(
            f"Out of memory at step {step + 1} ({detail}). Lower the batch size or the resolution, turn on "
            "gradient checkpointing, keep latents cached, lower the rank, or close other programs using the "
            f"memory; the model is unchanged.{self._resume_hint(step)}")

    def _resume_hint(self, step: int) -> str:
        """Keep a resumable state at `step` when the disk allows, and say how to continue."""
        try:
            self._save_resume_state(step)
        except (OSError, CheckpointError):
            return ""
        return f" A resumable state at step {step} is in {self.plan.run_dir}: resume the run to continue."

    def _request_samples(self, step: int) -> None:
        prompts = tuple(self.c.train.sample_prompts)
        if prompts:
            began = time.monotonic()
            with torch.no_grad():
                self.emit(ev.SampleRequest(step, prompts, self.c.train.seed))
            self.stats.sampled(step, len(prompts), time.monotonic() - began)

    def _save_resume_state(self, step: int) -> None:
        if not self.writes:
            return
        save_state(self.plan.run_dir, ResumeState(
            step=step, lora=self.network.kohya_state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), config_toml=self.c.to_toml()))

    def _finish(self, step: int, seconds: float, last_loss: float) -> TrainResult:
        epochs_done = min(self.plan.epochs, math.ceil(step * self.c.train.grad_accumulation
                                                      / self.plan.batches_per_epoch))
        path = self._save(self.plan.final_file(self.c.output.name), epochs_done, step)
        lora = None
        if self.full and self.c.output.extract_lora_rank and self.writes:
            lora = write_extracted_lora(self.model, self.network, self.c, self.facts)
            self.emit(ev.Message(f"Extracted a rank-{self.c.output.extract_lora_rank} LoRA: {lora}"))
        if self.writes:
            self.stats.write(self.plan.run_dir)
            # A finished run is never offered for resume: its state would retrain from an old step.
            (self.plan.run_dir / STATE_FILE).unlink(missing_ok=True)
        self.emit(ev.Finished(path, step, seconds, last_loss, tuple(self.files)))
        return TrainResult(path, list(self.files), step, seconds, last_loss, list(self.losses), lora,
                           list(self.validation))

    def _append_log(self, entries: list[tuple[int, float]]) -> None:
        with open(self.plan.run_dir / LOG_FILE, "a", encoding="utf-8") as f:
            for step, loss in entries:
                f.write(json.dumps({"step": step, "loss": loss}) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop log lines past the resume point (they were never part of a saved state)."""
        if not self.writes:
            return
        log = self.plan.run_dir / LOG_FILE
        atomic_write_text(log, "".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in self.losses
                                       if s <= step))


def _read_log(path: Path, upto: int) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["step"] <= upto:
            entries.append((record["step"], record["loss"]))
    return entries
