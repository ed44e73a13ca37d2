"""`lora-studio train --config run.toml [flags]` (or `python -m lib_training ...`): headless training
with the same engine.

Flags override the file; `lora-studio train --help` explains each. `lora-studio dataset
check|preprocess ...` checks or preprocesses a dataset folder; `lora-studio demo` runs the whole loop on
the built-in toy model (demo/main.py). Several GPUs:
`torchrun --nproc_per_node N -m lib_training train ...` (train/distributed.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from .cli_help import toml_only_epilog, with_default
from .config import METHODS, OPTIMIZERS, SCHEDULERS, TrainConfig
from .errors import LoraStudioError, TrainingCancelled
from .train import events as ev
from .train.console import ConsoleProgress

# flag -> (section, field, type, help)
FLAGS: dict[str, tuple[str, str, Callable, str]] = {
    "--checkpoint": ("model", "checkpoint", str, "single-file SD1.x/SD2.x/SDXL checkpoint (.safetensors) to train on"),
    "--prediction-type": ("model", "prediction_type", str, "auto (SD1: epsilon, SD2: v_prediction, SDXL: epsilon unless the file has a v_pred key), epsilon or v_prediction"),
    "--clip-skip": ("model", "clip_skip", int, "text-encoder layer from the end (1 = last, 2 = penultimate)"),
    "--data": ("data", "train_dir", str, "training folder in kohya layout: <repeats>_<trigger> <class>/ with images + .txt captions"),
    "--reg-data": ("data", "reg_dir", str, "class-image folder for DreamBooth prior preservation (optional)"),
    "--prior-loss-weight": ("data", "prior_loss_weight", float, "weight of the class-image loss (DreamBooth)"),
    "--resolution": ("data", "resolution", int, "training resolution in pixels (SD1: 512, SD2: 768, SDXL: 1024)"),
    "--method": ("network", "method", str, f"one of {', '.join(METHODS)}: lora (default) trains a LoRA; full "
                 "fine-tunes the weights themselves (DreamBooth) and writes a single-file checkpoint"),
    "--output-dir": ("output", "output_dir", str, "folder for the LoRA files (e.g. the WebUI's models/Lora); with "
                     "--method full, for the checkpoints (models/Stable-diffusion)"),
    "--name": ("output", "name", str, "output name: <name>.safetensors, epochs <name>-000004.safetensors"),
    "--trigger-word": ("output", "trigger_word", str, "trigger word, stored in the file's metadata"),
    "--extract-lora-rank": ("output", "extract_lora_rank", int, "--method full: also extract a LoRA of this rank "
                            "from the difference (SVD, as kohya's extract_lora_from_models.py); 0 = no"),
    "--extract-lora-dir": ("output", "extract_lora_dir", str, "folder for the extracted LoRA (default: the Lora "
                           "folder beside --output-dir)"),
    "--steps": ("train", "max_steps", int, "number of optimizer steps (overrides --epochs)"),
    "--epochs": ("train", "epochs", int, "number of epochs (one epoch = every image x its repeats)"),
    "--batch-size": ("train", "batch_size", int, "images per step"),
    "--seed": ("train", "seed", int, "random seed: the same seed + settings on the same machine give the same "
               "LoRA bit for bit (train.deterministic); on another machine or number of GPUs, the same within "
               "float rounding"),
    "--save-every": ("train", "save_every_epochs", int, "also save <name>-NNNNNN.safetensors every N epochs (0 = off)"),
    "--mixed-precision": ("train", "mixed_precision", str,
                          "auto (follows the weights: fp16 on CUDA, fp32 on the CPU), no, fp16 or bf16 (autocast)"),
    "--weight-dtype": ("model", "weight_dtype", str, "base weights as a GPU user's WebUI holds them: auto (fp16 on "
                       "CUDA, fp32 on the CPU), fp32, fp16, bf16, or fp8 (A1111's FP8 weight: Linear/Conv2d in fp8)"),
    "--rank": ("network", "rank", int, "LoRA rank (network_dim), typical 8-128"),
    "--alpha": ("network", "alpha", float, "LoRA alpha; the update is scaled by alpha/rank"),
    "--conv-rank": ("network", "conv_rank", int, "rank for the UNet's 3x3 convs (LoCon); 0 = off"),
    "--lr": ("optimizer", "unet_lr", float, "UNet learning rate"),
    "--te-lr": ("optimizer", "text_encoder_lr", float, "text-encoder learning rate (0 = UNet only)"),
    "--optimizer": ("optimizer", "optimizer", str, f"one of {', '.join(OPTIMIZERS)}"),
    "--scheduler": ("optimizer", "scheduler", str, f"one of {', '.join(SCHEDULERS)}"),
    "--warmup-steps": ("optimizer", "warmup_steps", int, "linear learning-rate warmup steps"),
    "--validation-split": ("validation", "split", float, "hold out this share of the training images for a "
                           "validation loss (fixed noise and timesteps; e.g. 0.1; 0 = off)"),
    "--validation-data": ("validation", "folder", str, "or: a folder of validation images, laid out as --data"),
    "--validate-every-steps": ("validation", "every_steps", int, "also compute the validation loss every N steps "
                               "(it always runs after each epoch when on)"),
}
SWITCHES: dict[str, tuple[str, str, bool, str]] = {
    "--unet-only": ("network", "train_text_encoder", False, "train the UNet only (no text-encoder LoRA)"),
    "--gradient-checkpointing": ("train", "gradient_checkpointing", True, "recompute activations to save memory"),
    "--no-cache-latents": ("data", "cache_latents", False, "encode images every step instead of once"),
    "--flip": ("data", "flip", True, "also train on mirrored images"),
    "--overwrite": ("output", "overwrite", True, "replace an existing <name>.safetensors"),
    "--strict": ("data", "strict", True, "refuse to start when any file would be left out (default: files that "
                 "cannot be trained on are left out and listed once)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-studio", description="LoRA Studio's headless trainer "
                                     "(also `python -m lib_training`).")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a LoRA", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=toml_only_epilog(), description=(
        "Train a kohya-format LoRA (or, with --method full, fine-tune the checkpoint itself) on a "
        "single-file checkpoint. Settings come from --config "
        "(TOML, the same file the WebUI tab exports); flags override it.\n"
        "Several GPUs or nodes: torchrun --nproc_per_node N -m lib_training train ... "
        "(each GPU takes --batch-size images of every step)."))
    train.add_argument("--config", type=Path, help="run settings as TOML (sections model, data, network, "
                                                   "optimizer, train, output)")
    for flag, (section, field, kind, text) in FLAGS.items():
        train.add_argument(flag, type=kind, help=with_default(text, section, field))
    for flag, (_, _, _, text) in SWITCHES.items():
        train.add_argument(flag, action="store_true", help=text)
    train.add_argument("--resume", action="store_true", help="continue a cancelled run (Ctrl-C) with the same name")
    train.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]; under torchrun, "
                                                        "each process takes cuda:LOCAL_RANK (default: auto)")
    train.add_argument("--print-config", action="store_true", help="print the merged settings as TOML and exit")
    _add_dataset_commands(commands)
    _add_demo_command(commands)
    extract = commands.add_parser("extract-lora", help="a LoRA from the difference of two checkpoints (SVD)",
                                  description="Write a kohya LoRA that takes BASE to TUNED (e.g. the epoch of a "
                                              "full fine-tune picked by eye), as kohya's extract_lora_from_models.py.")
    extract.add_argument("--base", type=Path, required=True, help="the checkpoint the fine-tune started from")
    extract.add_argument("--tuned", type=Path, required=True, help="the fine-tuned checkpoint")
    extract.add_argument("--rank", type=int, default=32, help="LoRA rank (alpha = rank)")
    extract.add_argument("--out", type=Path, required=True, help="the LoRA file to write (.safetensors)")
    extract.add_argument("--unet-only", action="store_true", help="leave the text encoder out")
    return parser


def _add_dataset_commands(commands) -> None:
    dataset = commands.add_parser("dataset", help="check or preprocess a dataset folder", description=(
        "Dataset tools. FOLDER is a kohya project (img/ [+ reg/]), a folder of <repeats>_<name>/ "
        "subfolders, or a plain folder of images with .txt captions."))
    tools = dataset.add_subparsers(dest="dataset_command", required=True)
    check = tools.add_parser("check", help="health report (exit status 1 when a file cannot be trained on)",
                             description="Report broken files, sizes, near-duplicates and caption problems. "
                                         "Reads only; exit status 1 when the report has errors.")
    check.add_argument("folder", type=Path, help="dataset folder")
    check.add_argument("--resolution", type=int, default=512, help="training resolution: smaller images are reported")
    check.add_argument("--trigger", default="", help="trigger word that every training caption should contain")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    prep = tools.add_parser("preprocess", help="write resized/cropped copies into a new folder",
                            description="Write upright RGB PNGs at the training size with their captions "
                                        "(0001.png + 0001.txt) into OUTPUT, a new folder; originals are only read.")
    prep.add_argument("folder", type=Path, help="dataset folder")
    prep.add_argument("output", type=Path, help="new folder for the processed copy (must not exist or be empty)")
    prep.add_argument("--resolution", type=int, default=512, help="output size in pixels")
    prep.add_argument("--crop", default="center", choices=("center", "focal", "auto", "keep_aspect"),
                      help="center, focal (faces, else the most detailed part), auto (faces, else center) "
                           "or keep_aspect (downscale the shorter side only, for bucketing)")
    prep.add_argument("--flip", action="store_true", help="also write a mirrored copy of each training image")


def _add_demo_command(commands) -> None:
    demo = commands.add_parser("demo", help="the whole loop on a built-in toy model (no download, ~2 min on a CPU)",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
        "Dataset -> Train -> Compare on a built-in 5 MB toy model that learns a shape it never saw. "
        "Proves the installation and shows the loop; writes everything into one folder."))
    demo.add_argument("--out", type=Path, default=Path("lora-studio-demo"), help="output folder (must be new or empty)")
    demo.add_argument("--overwrite", action="store_true", help="replace a previous demo's files in --out")
    demo.add_argument("--seed", type=int, default=1, help="seed: the same seed gives the same run")
    demo.add_argument("--fast", action="store_true", help="a shorter run (fewer steps and samples; for tests)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    for flag, (section, field, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            setattr(getattr(config, section), field, value)
    for flag, (section, field, value, _) in SWITCHES.items():
        if getattr(args, flag[2:].replace("-", "_")):
            setattr(getattr(config, section), field, value)
    if args.steps is not None and args.steps > 0:
        config.train.epochs = max(config.train.epochs, 1)
    return config


def main_exit() -> None:
    """The `lora-studio` console script."""
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "dataset":
            return _dataset(args)
        if args.command == "extract-lora":
            return _extract(args)
        if args.command == "demo":
            from .demo.main import run_demo

            run_demo(args.out, seed=args.seed, fast=args.fast, overwrite=args.overwrite)
            return 0
        config = config_from_args(args)
        if args.print_config:
            print(config.to_toml())
            return 0
        return _train(config, args)
    except TrainingCancelled as stop:
        print(f"\n{stop}", file=sys.stderr)
        return 130
    except LoraStudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _dataset(args: argparse.Namespace) -> int:
    if args.dataset_command == "check":
        import json

        from .data.health import check_dataset

        report = check_dataset(args.folder, resolution=args.resolution, trigger=args.trigger)
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
        return 0 if report.ok else 1
    from .data.preprocess import PreprocessOptions, preprocess_dataset

    options = PreprocessOptions(resolution=args.resolution, crop=args.crop, flip=args.flip)
    result = preprocess_dataset(args.folder, args.output, options)
    print(f"Wrote {len(result.images)} images to {result.output} (faces: {result.face_detector})")
    for skipped in result.skipped:
        print(f"  skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    return 0


def _extract(args: argparse.Namespace) -> int:
    from .errors import SettingsError
    from .lora.extract import extract_from_files

    if args.rank < 1:
        raise SettingsError(f"--rank is {args.rank}; it must be at least 1 (typical: 16-128).")
    if args.out.exists():
        raise SettingsError(f"{args.out} already exists; choose another --out.")
    path = extract_from_files(args.base, args.tuned, args.rank, args.out, text_encoder=not args.unet_only)
    print(f"Saved {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _train(config: TrainConfig, args: argparse.Namespace) -> int:
    import torch

    from .models.fp8 import store_as_fp8
    from .models.single_file import load_checkpoint
    from .models.weight_dtype import resolve_weight_dtype
    from .train import distributed
    from .train.before_load import refuse_before_loading
    from .train.interrupt import cancel_on_signals
    from .train.loop import train

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    ranks = distributed.init_from_env(torch.device(device).type)
    if ranks.active and torch.device(device).type == "cuda":
        device = f"cuda:{ranks.local_rank}"
        torch.cuda.set_device(device)
    try:
        config.validate(need_checkpoint=True)
        checked = _preflight(config, ranks)
        refuse_before_loading(config, args.resume, ranks.world_size, checked)
        dtype, fp8 = resolve_weight_dtype(config.model.weight_dtype, config.train.mixed_precision,
                                          torch.device(device).type)
        _say(ranks, f"Loading {config.model.checkpoint} ...")
        model = load_checkpoint(Path(config.model.checkpoint), config.model.prediction_type, config.model.clip_skip,
                                config.model.tokenizer_dir, device=device, dtype=dtype)
        if fp8:
            store_as_fp8([model.unet(), model.text_encoder()])
        cancel = ev.CancelToken()
        progress = ConsoleProgress()
        try:
            with cancel_on_signals(cancel, announce=ranks.is_main):
                result = train(config, model, on_event=progress, cancel=cancel, resume=args.resume,
                               checked=checked)
        except KeyboardInterrupt:
            raise TrainingCancelled("Interrupted (no resumable state was written).") from None
        finally:
            progress.close()
    finally:
        distributed.shutdown()
    if not ranks.is_main:
        return 0
    size_mb = result.path.stat().st_size / 1e6
    print(f"Saved {result.path} ({size_mb:.1f} MB): {result.steps} steps in {result.seconds:.1f} s, "
          f"final loss {result.final_loss:.4f}")
    for extra in result.files:
        if extra != result.path:
            print(f"  epoch file {extra}")
    if result.extracted_lora is not None:
        print(f"  extracted LoRA {result.extracted_lora}")
    if result.validation:
        step, loss = min(result.validation, key=lambda sv: sv[1])
        print(f"  lowest validation loss {loss:.5f} at step {step} (log: validation.jsonl in the run folder)")
    return 0


def _preflight(config: TrainConfig, ranks):
    """The dataset's pre-flight, before the checkpoint is loaded: one listing of what is left out."""
    from .train.plan import preflight_for

    checked = preflight_for(config)
    _say(ranks, checked.format_text())
    return checked


def _say(ranks, text: str) -> None:
    if ranks.is_main:
        print(text, flush=True)
