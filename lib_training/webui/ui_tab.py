"""The top-level "LoRA Studio" tab: Dataset, Train, Compare (script_callbacks.on_ui_tabs)."""

from __future__ import annotations

DATASET_LATER = (
    "### Dataset — coming in a later version\n"
    "Turn a folder or an upload of photos into a training set: a health report (sizes, duplicates, broken "
    "files, missing captions), crops and flips, captions from A1111's interrogators with the trigger word, and "
    "class images generated with the loaded model.\n\n"
    "Until then, prepare the folder by hand in kohya's layout — `<repeats>_<trigger> <class>/` holding the "
    "images and their `.txt` captions — and pick it in the **Train** tab.")

COMPARE_LATER = (
    "### Compare — coming in a later version\n"
    "Pick the best result: image grids over epochs × weights × prompts × seeds made with the loaded model, "
    "similarity to the training images, prompt alignment, drift of the base class, loss curves side by side, "
    "and a recommended epoch and weight.\n\n"
    "Until then, every epoch is saved as `<name>-000004.safetensors` in the Lora folder: compare them with "
    "txt2img's X/Y/Z plot.")


def on_ui_tabs():
    import gradio as gr

    from .settings import default_preset_label
    from .ui_train import create_train_tab

    with gr.Blocks(analytics_enabled=False) as block:
        with gr.Column(elem_id="lora_studio"):
            with gr.Tabs(elem_id="lora_studio_tabs", selected="train"):
                with gr.Tab("Dataset", id="dataset", elem_id="lora_studio_dataset_tab"):
                    gr.Markdown(DATASET_LATER, elem_classes=["lora-studio-later"])
                with gr.Tab("Train", id="train", elem_id="lora_studio_train_tab"):
                    create_train_tab(default_preset_label())
                with gr.Tab("Compare", id="compare", elem_id="lora_studio_compare_tab"):
                    gr.Markdown(COMPARE_LATER, elem_classes=["lora-studio-later"])
    return [(block, "LoRA Studio", "lora_studio")]
