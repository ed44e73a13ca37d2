"""The top-level "LoRA Studio" tab: Dataset, Train, Compare (script_callbacks.on_ui_tabs)."""

from __future__ import annotations


def on_ui_tabs():
    import gradio as gr

    from .settings import default_preset_label
    from .compare.ui import create_compare_tab
    from .dataset.ui import connect_use_in_train, create_dataset_tab
    from .train.ui import create_train_tab

    with gr.Blocks(analytics_enabled=False) as block:
        with gr.Column(elem_id="lora_studio"):
            with gr.Tabs(elem_id="lora_studio_tabs", selected="train") as tabs:
                with gr.Tab("Dataset", id="dataset", elem_id="lora_studio_dataset_tab"):
                    dataset_tab = create_dataset_tab()
                with gr.Tab("Train", id="train", elem_id="lora_studio_train_tab"):
                    train_tab = create_train_tab(default_preset_label())
                with gr.Tab("Compare", id="compare", elem_id="lora_studio_compare_tab") as compare_tab:
                    create_compare_tab(compare_tab)
        connect_use_in_train(dataset_tab, train_tab, tabs)  # "Use in Train" fills the Train sub-tab
    return [(block, "LoRA Studio", "lora_studio")]
