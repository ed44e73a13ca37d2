"""The Compare sub-tab (gradio 3.41): inputs on the left, the answer on the right.

No tensor work and no logic here: `form.py` holds the form, `actions.py` does the work,
`generator.py` runs it in A1111. Generate goes through A1111's `wrap_gradio_gpu_call` (queue + job) with the
`lora_studio_compare_start` JavaScript (javascript/lora_studio_compare.js), which gives the task id
and shows A1111's progress bar above the status line. Clicking a cell of the grid (or a row of the
table) selects it; "Send to txt2img" puts its prompt, negative prompt, seed, steps, CFG and size into
txt2img and switches there.
"""

from __future__ import annotations

import gradio as gr

from . import actions
from . import form as compare_form
from .actions import COLUMN_TYPES, COLUMNS
from .form import SOURCE_FILES, SOURCE_RUN, SOURCES
from .form import request_from_form as request_from
from ..train.actions import Folders

INTRO = ("Make a grid of your LoRA's epochs × weights × prompts × seeds with the loaded model, measure each "
         "choice, and get the best epoch and weight with the reason. Weight 0 is the base model.")


WAITING = ("Choose a run (or files), then press **Generate comparison**: the best epoch and weight, with the "
           "numbers behind the choice, appear here, above the grid.")


def _generator():
    from . import generator as compare_generator

    return compare_generator


def _folders() -> Folders:
    from ..backend import runtime

    return Folders(runtime.lora_dir(), runtime.runs_dir(), runtime.checkpoint_dir())


def _embedder_words() -> str:
    try:
        return _generator().embedder_source()[1]
    except Exception as error:  # the settings are not readable yet: say so, the tab still builds
        return f"CLIP model: unknown ({type(error).__name__})"


def _table_value(rows):
    return {"headers": COLUMNS, "data": rows or [["" for _ in COLUMNS]]}


def create_compare_tab(tab=None) -> None:
    """The sub-tab's content; `tab` (its gr.Tab) lists runs and files again whenever it is opened."""
    from modules.call_queue import wrap_gradio_gpu_call
    from modules.ui_components import ToolButton

    folders = _folders()
    runs = compare_form.run_names(folders)

    with gr.Row(elem_id="lora_studio_compare"):
        with gr.Column(scale=2, elem_id="lora_studio_compare_inputs"):
            gr.Markdown(INTRO, elem_id="lora_studio_compare_intro")
            source = gr.Radio(choices=list(SOURCES), value=SOURCE_RUN, label="Compare",
                              elem_id="lora_studio_compare_source")
            with gr.Row():
                run = gr.Dropdown(choices=runs, value=None, label="Run", elem_id="lora_studio_compare_run")
                files = gr.Dropdown(choices=compare_form.lora_file_choices(folders.lora_dir), value=[],
                                    multiselect=True, label="LoRA files", visible=False,
                                    elem_id="lora_studio_compare_files")
                refresh = ToolButton("\U0001f504", elem_id="lora_studio_compare_refresh",
                                     tooltip="List the runs and LoRA files again")
            files_info = gr.Markdown("Choose a run: all its epoch files and the final file are compared.",
                                     elem_id="lora_studio_compare_files_info")
            with gr.Row():
                weights = gr.Textbox(compare_form.DEFAULT_WEIGHTS, label="Weights",
                                     elem_id="lora_studio_compare_weights", info="0 = the base model without the LoRA")
                seeds = gr.Textbox(compare_form.DEFAULT_SEEDS, label="Seeds", elem_id="lora_studio_compare_seeds",
                                   info="two or more also measure diversity")
            prompts = gr.Textbox("", lines=3, label="Prompts (one per line)", elem_id="lora_studio_compare_prompts",
                                 placeholder="a photo of sks woman")
            with gr.Row():
                class_prompt = gr.Textbox("", label="Class prompt (for drift)", elem_id="lora_studio_compare_class",
                                          placeholder="a photo of a woman")
                trigger = gr.Textbox("", label="Trigger word(s)", elem_id="lora_studio_compare_trigger",
                                     info="left out of the CLIP score")
            with gr.Accordion("Generation settings", open=False, elem_id="lora_studio_compare_settings"):
                negative = gr.Textbox("", label="Negative prompt", elem_id="lora_studio_compare_negative")
                with gr.Row():
                    sampler = gr.Dropdown(choices=_generator().sampler_names(), value=compare_form.DEFAULT_SAMPLER,
                                          label="Sampler", elem_id="lora_studio_compare_sampler")
                    steps = gr.Number(compare_form.DEFAULT_STEPS, precision=0, label="Steps",
                                      elem_id="lora_studio_compare_steps")
                    cfg = gr.Number(compare_form.DEFAULT_CFG, label="CFG scale", elem_id="lora_studio_compare_cfg")
                with gr.Row():
                    width = gr.Number(compare_form.DEFAULT_SIZE, precision=0, label="Width",
                                      elem_id="lora_studio_compare_width")
                    height = gr.Number(compare_form.DEFAULT_SIZE, precision=0, label="Height",
                                       elem_id="lora_studio_compare_height")
            with gr.Accordion("Numbers and loss curves", open=False, elem_id="lora_studio_compare_numbers"):
                metrics = gr.Checkbox(True, label="Measure and recommend", elem_id="lora_studio_compare_metrics")
                training_dir = gr.Textbox("", label="Training images (for fidelity)",
                                          elem_id="lora_studio_compare_training_dir",
                                          placeholder="the run's dataset folder")
                embedder_info = gr.Markdown(_embedder_words(), elem_id="lora_studio_compare_embedder")
                curve_runs = gr.Dropdown(choices=compare_form.curve_run_names(folders), value=[], multiselect=True,
                                         label="Loss curves of runs", elem_id="lora_studio_compare_curve_runs")
            plan = gr.Markdown("", elem_id="lora_studio_compare_plan")
            with gr.Row():
                generate = gr.Button("Generate comparison", variant="primary", elem_id="lora_studio_compare_generate")
                stop = gr.Button("Stop", elem_id="lora_studio_compare_stop")

        with gr.Column(scale=3, elem_id="lora_studio_compare_results"):
            status = gr.HTML("", elem_id="lora_studio_compare_status")
            recommendation = gr.Markdown(WAITING, elem_id="lora_studio_compare_recommendation")
            with gr.Column(visible=False, elem_id="lora_studio_compare_answer") as answer:
                with gr.Row(elem_id="lora_studio_compare_send_row"):
                    selected = gr.Textbox("", label="Selected cell (the recommended one, or click one in the grid)",
                                          interactive=False, elem_id="lora_studio_compare_selected")
                    send = gr.Button("Send to txt2img", variant="primary", elem_id="lora_studio_compare_send")
                with gr.Row():
                    send_prompt = gr.Textbox("", label="Prompt", elem_id="lora_studio_compare_send_prompt")
                    send_seed = gr.Number(-1, precision=0, label="Seed", elem_id="lora_studio_compare_send_seed")
                send_negative = gr.Textbox("", visible=False, elem_id="lora_studio_compare_send_negative")
                send_settings = gr.Textbox("{}", visible=False, elem_id="lora_studio_compare_send_settings")
                table = gr.Dataframe(value=_table_value([]), headers=COLUMNS, datatype=COLUMN_TYPES, type="array",
                                     interactive=False, wrap=True, label="Numbers per file and weight (click a header "
                                     "to sort, a row to select it)", elem_id="lora_studio_compare_table")
                gr.Markdown("Grid: click a cell to select it for *Send to txt2img*. Grey cells were not generated.",
                            elem_id="lora_studio_compare_grid_hint")
                grid = gr.Image(type="pil", interactive=False, show_label=False, elem_id="lora_studio_compare_grid")
                curves = gr.Image(label="Loss curves", type="pil", interactive=False,
                                  elem_id="lora_studio_compare_curves")
                grid_file = gr.File(label="Full-size grid (PNG with infotext)", interactive=False,
                                    elem_id="lora_studio_compare_grid_file")

    state = gr.State(None)
    task_id = gr.Textbox(visible=False)
    form = [source, run, files, weights, prompts, class_prompt, trigger, seeds, negative, sampler, steps, cfg, width,
            height, training_dir, metrics, curve_runs]
    send_boxes = [selected, send_prompt, send_negative, send_seed, send_settings]
    # A1111 keeps UI defaults in ui-config.json by tab and label ("lora_studio/Sampler/value"): labels such as
    # Sampler or Steps are used by the other sub-tabs too, and a default saved by one would be applied to all.
    for component in form + send_boxes:
        component.do_not_save_to_config = True

    # ---- choosing what to compare ------------------------------------------------------------
    def switch_source(value):
        return gr.update(visible=value == SOURCE_RUN), gr.update(visible=value == SOURCE_FILES)

    source.change(fn=switch_source, inputs=[source], outputs=[run, files], show_progress=False)

    def fill(defaults: compare_form.Defaults, form_values):
        request = request_from(*form_values)
        request.prompts, request.class_prompt = defaults.prompts, defaults.class_prompt
        request.width = request.height = defaults.size
        request.weights = defaults.weights or request.weights  # a full fine-tune's checkpoints: 0 and 1
        return (defaults.message, defaults.prompts, defaults.class_prompt, defaults.trigger_words,
                defaults.training_dir, defaults.size, defaults.size, gr.update(value=defaults.curve_runs),
                gr.update(value=defaults.weights) if defaults.weights else gr.update(),
                actions.plan_text(request, _folders()))

    filled = [files_info, prompts, class_prompt, trigger, training_dir, width, height, curve_runs, weights, plan]

    def choose_run(name, *form_values):
        if not name:
            return [gr.update() for _ in filled]
        try:
            return fill(compare_form.run_defaults(name, _folders()), form_values)
        except Exception as error:  # a run folder that went away: say so in place
            return [f"⚠ {error}"] + [gr.update() for _ in filled[1:]]

    def choose_files(names, *form_values):
        if not names:
            return [gr.update() for _ in filled]
        return fill(compare_form.files_defaults(names, _folders()), form_values)

    run.change(fn=choose_run, inputs=[run] + form, outputs=filled, show_progress=False)
    files.change(fn=choose_files, inputs=[files] + form, outputs=filled, show_progress=False)

    def refresh_lists():
        f = _folders()
        return (gr.update(choices=compare_form.run_names(f)),
                gr.update(choices=compare_form.lora_file_choices(f.lora_dir)),
                gr.update(choices=compare_form.curve_run_names(f)), _embedder_words())

    refresh.click(fn=refresh_lists, inputs=[], outputs=[run, files, curve_runs, embedder_info], show_progress=False)
    if tab is not None:  # a run trained a minute ago is in the list when the user comes here
        tab.select(fn=refresh_lists, inputs=[], outputs=[run, files, curve_runs, embedder_info], show_progress=False)

    def update_plan(*form_values):
        return actions.plan_text(request_from(*form_values), _folders())

    for box in (weights, seeds, prompts, class_prompt):
        box.blur(fn=update_plan, inputs=form, outputs=[plan], show_progress=False)
    for box in (width, height):
        box.change(fn=update_plan, inputs=form, outputs=[plan], show_progress=False)

    # ---- generate ----------------------------------------------------------------------------
    outputs = [answer, grid, table, recommendation, curves, grid_file] + send_boxes + [state, status]

    def run_comparison(id_task, *form_values):
        from ...errors import LoraStudioError

        request = request_from(*form_values)
        try:
            outcome = _generator().compare_in_webui(request)
        except LoraStudioError as error:  # a bad form: nothing was generated
            return [gr.update() for _ in outputs[:-1]] + [f"<div class='error'>{_escape(str(error))}</div>"]
        return ([gr.update(visible=True), outcome.display, _table_value(outcome.table), outcome.recommendation_md,
                 outcome.curves, str(outcome.grid_path) if outcome.grid_path else None]
                + list(actions.send_values(outcome.selected)) + [outcome.state(), f"<p>{outcome.status_md}</p>"])

    generate.click(
        fn=wrap_gradio_gpu_call(run_comparison, extra_outputs=[gr.update() for _ in outputs[:-1]]),
        _js="lora_studio_compare_start",
        inputs=[task_id] + form,
        outputs=outputs,
        show_progress=False,
    )
    stop.click(fn=lambda: _generator().interrupt(), inputs=[], outputs=[status], show_progress=False)

    # ---- select a cell, send it ----------------------------------------------------------------
    def select_cell(current, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, (list, tuple)) else None
        choice = actions.cell_at(current, index[0], index[1]) if index and len(index) == 2 else None
        return actions.send_values(choice) if choice else [gr.update() for _ in send_boxes]

    grid.select(fn=select_cell, inputs=[state], outputs=send_boxes, show_progress=False)

    def select_row(current, rows, evt: gr.SelectData):
        label = evt.value if isinstance(evt.value, str) else None
        if (not label or label not in (current or {}).get("groups", {})) and isinstance(evt.index, (list, tuple)):
            row = evt.index[0]
            label = rows[row][0] if rows and 0 <= row < len(rows) else None
        choice = actions.cell_of_row(current, label) if label else None
        return actions.send_values(choice) if choice else [gr.update() for _ in send_boxes]

    table.select(fn=select_row, inputs=[state, table], outputs=send_boxes, show_progress=False)
    send.click(fn=None, _js="lora_studio_compare_send", inputs=[send_prompt, send_negative, send_seed, send_settings],
               outputs=[])


def _escape(text: str) -> str:
    import html

    return html.escape(text)
