"""Settings > LoRA Studio: folders, default preset, sample steps, Compare's CLIP model (A1111's `shared.opts`)."""

from __future__ import annotations

from .train.presets import DEFAULT_PRESET, PRESETS, find_preset

SECTION = ("lora_studio", "LoRA Studio")
OPTION_DEFAULT_PRESET = "lora_studio_default_preset"


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    from .compare.generator import OPTION_CLIP_MODEL, OPTION_COMPARE_DIR
    from .backend.runtime import OPTION_DATASETS_DIR, OPTION_RUNS_DIR, OPTION_SAMPLE_STEPS

    options = {
        OPTION_DATASETS_DIR: shared.OptionInfo(
            "", "Datasets folder (its subfolders are listed in the Train tab)").info(
            "empty = <webui data folder>/lora_studio/datasets"),
        OPTION_RUNS_DIR: shared.OptionInfo(
            "", "Runs folder (settings, loss log and resumable state of each run)").info(
            "empty = <webui data folder>/lora_studio/runs (runs the CLI wrote into <Lora folder>/lora_studio_runs are listed too)"),
        OPTION_DEFAULT_PRESET: shared.OptionInfo(
            find_preset(DEFAULT_PRESET).label, "Default training preset", gr.Dropdown,
            {"choices": [p.label for p in PRESETS.values()]}),
        OPTION_SAMPLE_STEPS: shared.OptionInfo(
            20, "Sampling steps for sample images during training", gr.Slider,
            {"minimum": 1, "maximum": 150, "step": 1}),
        OPTION_CLIP_MODEL: shared.OptionInfo(
            "", "Compare: CLIP model for the numbers (fidelity, alignment, drift, diversity)").info(
            "empty = A1111's own CLIP (the one Interrogate CLIP loads) when it is there; or a transformers CLIP "
            "folder / model id, e.g. openai/clip-vit-base-patch32, or open_clip:ViT-B-32:<tag or .safetensors>"),
        OPTION_COMPARE_DIR: shared.OptionInfo(
            "", "Compare: folder for comparison grids and their image cache").info(
            "empty = outputs/lora-studio-compare"),
    }
    for key, info in options.items():
        info.section = SECTION
        shared.opts.add_option(key, info)


def default_preset_label() -> str:
    """The preset chosen in Settings (the built-in default when unset or unknown)."""
    from modules import shared

    value = getattr(shared.opts, OPTION_DEFAULT_PRESET, "") if shared.opts is not None else ""
    try:
        return find_preset(value).label
    except KeyError:
        return find_preset(DEFAULT_PRESET).label
