"""The Train sub-tab (gradio 3.41): controls built from `form.FIELDS`, actions in `actions.py`.

No tensor work here. Start goes through A1111's `wrap_gradio_gpu_call` (queue + job) with the
`lora_studio_start` JavaScript (javascript/lora_studio.js) that gives the task id and starts A1111's
progress bar; the loss chart and live samples are drawn by the same script from
`/internal/lora-studio/status`.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ...data.importer import dataset_dirs
from . import form, actions as train_actions
from .dataset_summary import list_dataset_folders
from .form import FIELDS, GROUPS, MAIN, METHOD_DREAMBOOTH, METHOD_FULL, METHOD_LORA, METHODS
from ..backend.outputs import DEFAULT_PREFERRED_WEIGHT
from .presets import describe, find_preset, preset_choices
from .runs import runs_table_html

CHART_HTML = ("<div id='lora_studio_chart'><div class='lora-studio-chart-info'>Loss chart: no training yet.</div>"
              "<canvas width='640' height='220'></canvas><div id='lora_studio_live_samples'></div></div>")


def _runtime():
    from ..backend import runtime

    return runtime


def _folders() -> train_actions.Folders:
    rt = _runtime()
    return train_actions.Folders(rt.lora_dir(), rt.runs_dir(), rt.checkpoint_dir())


def _component(f: form.Field, value):
    common = dict(label=f.label, elem_id=f.elem_id)
    if f.info:
        common["info"] = f.info
    if f.kind == "int":
        return gr.Number(value=value, precision=0, **common)
    if f.kind == "float":
        return gr.Number(value=value, **common)
    if f.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if f.kind == "choice":
        return gr.Dropdown(choices=list(f.choices), value=value, **common)
    if f.kind == "lines":
        return gr.Textbox(value=value, lines=3, **common)
    return gr.Textbox(value=value, lines=1, **common)


def _device_and_family():
    """The device and model family for the estimate (properties only, no tensor work)."""
    from modules import devices, shared

    from .calibration import calibrated
    from .estimate import device_info_from_torch

    half = not getattr(shared.cmd_opts, "no_half", False)
    device = device_info_from_torch(devices.device, half_weights=half, fp8_weights=bool(getattr(devices, "fp8", False)))
    return calibrated(device, _folders().run_roots, devices.device), _loaded_family()


def _loaded_family() -> str:
    """'sdxl', 'sd2' or 'sd1' from the loaded model's flags (A1111 sets is_sdxl / is_sd2)."""
    from modules import shared

    model = shared.sd_model
    if getattr(model, "is_sdxl", False):
        return "sdxl"
    return "sd2" if getattr(model, "is_sd2", False) else "sd1"


def _checkpoint_file() -> str:
    from modules import shared

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    return getattr(info, "filename", "") or ""


def create_train_tab(default_preset_label: str) -> dict:
    """Build the tab; returns the components other sub-tabs fill (the Dataset tab's "Use in Train"):
    {"fields": {form key: component}, "method": Radio, "dataset_summary": Markdown}."""
    from modules.call_queue import wrap_gradio_gpu_call
    from modules.ui_components import ToolButton

    defaults = form.default_values(find_preset(default_preset_label).key)
    c: dict[str, gr.components.Component] = {}

    with gr.Row(elem_id="lora_studio_train"):
        with gr.Column(scale=3, elem_id="lora_studio_settings"):
            with gr.Row():
                dataset_choice = gr.Dropdown(label="Datasets", elem_id="lora_studio_dataset_choice",
                                             choices=list_dataset_folders(_runtime().datasets_dir()),
                                             info="folders in the datasets folder (Settings > LoRA Studio)")
                dataset_refresh = ToolButton("\U0001f504", elem_id="lora_studio_dataset_refresh",
                                             tooltip="List the datasets folder again")
            c["data.train_dir"] = _component(form.field("data.train_dir"), defaults["data.train_dir"])
            dataset_summary = gr.Markdown("Choose a dataset folder.", elem_id="lora_studio_dataset_summary")
            with gr.Row():
                c["output.name"] = _component(form.field("output.name"), defaults["output.name"])
                c["output.trigger_word"] = _component(form.field("output.trigger_word"),
                                                      defaults["output.trigger_word"])
            name_check = gr.Markdown("", elem_id="lora_studio_name_check")
            c["output.overwrite"] = _component(form.field("output.overwrite"), defaults["output.overwrite"])
            method = gr.Radio(choices=list(METHODS), value=METHOD_LORA, label="Method", elem_id="lora_studio_method")
            with gr.Group(visible=False, elem_id="lora_studio_dreambooth") as dreambooth_group:
                c["data.reg_dir"] = _component(form.field("data.reg_dir"), defaults["data.reg_dir"])
                c["data.prior_loss_weight"] = _component(form.field("data.prior_loss_weight"),
                                                         defaults["data.prior_loss_weight"])
            preset = gr.Dropdown(choices=preset_choices(), value=default_preset_label, label="Preset",
                                 elem_id="lora_studio_preset")
            preset_info = gr.Markdown(describe(find_preset(default_preset_label)),
                                      elem_id="lora_studio_preset_info")
            for group in GROUPS:
                if group == MAIN:
                    continue
                with gr.Accordion(group, open=False, elem_id="lora_studio_group_" + group.split()[0].lower()):
                    for f in FIELDS:
                        if f.group == group:
                            c[f.key] = _component(f, defaults[f.key])

        with gr.Column(scale=2, elem_id="lora_studio_run"):
            estimate_box = gr.Markdown("Press <i>Estimate</i> for steps, time and memory.",
                                       elem_id="lora_studio_estimate")
            estimate_button = gr.Button("Estimate", elem_id="lora_studio_estimate_button")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="lora_studio_start")
                cancel = gr.Button("Cancel", elem_id="lora_studio_cancel")
            resume = gr.Checkbox(False, label="Resume the stopped run with this name (same settings)",
                                 elem_id="lora_studio_resume")
            gr.HTML(CHART_HTML)
            gallery = gr.Gallery(label="Samples", elem_id="lora_studio_gallery", columns=4, height="auto",
                                 show_label=True)
            result = gr.HTML("", elem_id="lora_studio_result")
            with gr.Row():
                send_prompt = gr.Textbox(label="Prompt for txt2img", elem_id="lora_studio_send_prompt",
                                         placeholder="<lora:name:0.8> trigger")
                send = gr.Button("Send to txt2img", elem_id="lora_studio_send_to_txt2img")
            with gr.Accordion("Runs", open=True, elem_id="lora_studio_runs"):
                records, choices = train_actions.run_choices(_folders())
                runs_html = gr.HTML(runs_table_html(records))
                with gr.Row():
                    run_choice = gr.Dropdown(choices=choices, label="Run", elem_id="lora_studio_run_choice")
                    runs_refresh = ToolButton("\U0001f504", elem_id="lora_studio_runs_refresh",
                                              tooltip="List the runs again")
                load_run = gr.Button("Load its settings", elem_id="lora_studio_load_run")
                run_message = gr.Markdown("")
            with gr.Accordion("Export settings for the command line", open=False):
                export_button = gr.Button("Export run.toml", elem_id="lora_studio_export")
                export_file = gr.File(label="run.toml", interactive=False, elem_id="lora_studio_export_file")
                export_message = gr.Markdown("")

    fields = [c[key] for key in form.FIELD_KEYS]
    task_id = gr.Textbox(visible=False)

    # ---- dataset, name, method, preset ------------------------------------------------------
    def summarize(train_dir, reg_dir, caption_extension, trigger):
        return train_actions.dataset_line(train_dir, reg_dir, caption_extension, trigger)

    summary_inputs = [c["data.train_dir"], c["data.reg_dir"], c["data.caption_extension"], c["output.trigger_word"]]
    summary_outputs = [dataset_summary, c["output.trigger_word"]]
    def choose_dataset(path, reg_dir, caption_extension, trigger):
        if not path:
            return gr.update(), gr.update(), gr.update()
        path = str(dataset_dirs(Path(path)).train_dir)  # a Dataset-tab folder trains from its img/
        return (path, *summarize(path, reg_dir, caption_extension, trigger))

    dataset_choice.change(fn=choose_dataset, inputs=[dataset_choice] + summary_inputs[1:],
                          outputs=[c["data.train_dir"]] + summary_outputs, show_progress=False)
    # Not .change: that would scan the folder on every keystroke.
    for typed in (c["data.train_dir"].blur, c["data.train_dir"].submit):
        typed(fn=summarize, inputs=summary_inputs, outputs=summary_outputs, show_progress=False)
    dataset_refresh.click(fn=lambda: gr.update(choices=list_dataset_folders(_runtime().datasets_dir())),
                          inputs=[], outputs=[dataset_choice], show_progress=False)

    def check_name(name, overwrite):
        return train_actions.name_status(name, overwrite, _runtime().lora_dir())

    for trigger in (c["output.name"].change, c["output.overwrite"].change):
        trigger(fn=check_name, inputs=[c["output.name"], c["output.overwrite"]], outputs=[name_check],
                show_progress=False)

    # Class images: DreamBooth-LoRA needs them, the full fine-tune takes them when given.
    method.change(fn=lambda m: gr.update(visible=m in (METHOD_DREAMBOOTH, METHOD_FULL)), inputs=[method],
                  outputs=[dreambooth_group], show_progress=False)

    def apply_preset(label):
        description, values = train_actions.preset_values(label, _loaded_family())
        return [description] + [gr.update(value=values[key]) if key in values else gr.update()
                                for key in form.FIELD_KEYS]

    preset.change(fn=apply_preset, inputs=[preset], outputs=[preset_info] + fields, show_progress=False)

    # ---- estimate, start, cancel -------------------------------------------------------------
    def make_estimate(method_value, *values):
        from modules import shared

        device, family = _device_and_family()
        sample_steps = int(getattr(shared.opts, _runtime().OPTION_SAMPLE_STEPS, 20) or 20)
        return train_actions.estimate_markdown(method_value, values, _folders(), device, family, sample_steps)

    estimate_button.click(fn=make_estimate, inputs=[method] + fields, outputs=[estimate_box])

    def start_training(id_task, resume_value, method_value, *values):
        outcome = train_actions.start_training(resume_value, method_value, values, _folders(),
                                               run=_runtime().run_from_ui,
                                               preferred_weight=DEFAULT_PREFERRED_WEIGHT)
        if not outcome.started:
            return gr.update(), gr.update(), gr.update(), gr.update(), outcome.result_html
        records, choices = train_actions.run_choices(_folders())
        return (outcome.samples, runs_table_html(records), gr.update(choices=choices), outcome.prompt or gr.update(),
                outcome.result_html)

    start.click(
        fn=wrap_gradio_gpu_call(start_training, extra_outputs=[gr.update(), gr.update(), gr.update(), gr.update()]),
        _js="lora_studio_start",
        inputs=[task_id, resume, method] + fields,
        outputs=[gallery, runs_html, run_choice, send_prompt, result],
        show_progress=False,
    )
    cancel.click(fn=lambda: train_actions.cancel_training(_runtime().get_service().cancel), inputs=[],
                 outputs=[run_message], show_progress=False)

    # ---- hand-off, runs, export --------------------------------------------------------------
    send.click(fn=None, _js="lora_studio_send_to_txt2img", inputs=[send_prompt], outputs=[])

    def refresh_runs():
        records, choices = train_actions.run_choices(_folders())
        return runs_table_html(records), gr.update(choices=choices)

    runs_refresh.click(fn=refresh_runs, inputs=[], outputs=[runs_html, run_choice], show_progress=False)

    def load_settings(label):
        method_value, values, message = train_actions.load_run(label, _folders())
        if values is None:
            return [gr.update(), message] + [gr.update() for _ in fields]
        return [method_value, message] + values

    load_run.click(fn=load_settings, inputs=[run_choice], outputs=[method, run_message] + fields)

    def export(method_value, *values):
        return train_actions.export_settings(method_value, values, _folders(), _checkpoint_file())

    export_button.click(fn=export, inputs=[method] + fields, outputs=[export_file, export_message])
    return {"fields": c, "method": method, "dataset_summary": dataset_summary}
