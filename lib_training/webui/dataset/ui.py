"""The Dataset sub-tab (gradio 3.41): controls and wiring only; what the buttons do is in `actions.py`.

Preprocess, captioning and class images go through A1111's `wrap_gradio_gpu_call` (queue + job)
with a JavaScript function per button (javascript/lora_studio.js) that gives the task id and shows
A1111's progress bar above the job's result box, as the Train tab's Start does. Stop interrupts
only a job of this tab (shared.state.interrupt()), never someone's txt2img.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from . import actions, class_images, names
from .interrogators import CAPTIONERS
from .thumbnails import thumbnail

CLASS_FROM_PROMPT = "Class prompt"
CLASS_FROM_CAPTIONS = "Each training caption, trigger word → class word"
_running = threading.Event()  # set while a job of this tab runs: Stop interrupts only that


def _runtime():
    from ..backend import runtime

    return runtime


def _datasets_dir() -> Path:
    return _runtime().datasets_dir()


def _root(name: str) -> Path:
    return names.dataset_root(_datasets_dir(), name)


@dataclass
class DatasetTab:
    """What ui_tab.py wires to the Train sub-tab ("Use in Train")."""

    dataset: gr.Dropdown
    trigger: gr.Textbox
    use_in_train: gr.Button
    use_message: gr.HTML


def _sampler_choices() -> tuple[list[str], str]:
    try:
        from modules import sd_samplers

        sampler_names = sd_samplers.visible_sampler_names()
    except Exception:  # outside a started WebUI (layout tests)
        sampler_names = []
    sampler_names = sampler_names or [class_images.DEFAULT_SAMPLER]
    return sampler_names, class_images.DEFAULT_SAMPLER if class_images.DEFAULT_SAMPLER in sampler_names else sampler_names[0]


def _job_html(elem_id: str) -> gr.HTML:
    return gr.HTML("", elem_id=elem_id, elem_classes=["lora-studio-ds-job"])


def create_dataset_tab() -> DatasetTab:
    from modules.call_queue import wrap_gradio_gpu_call
    from modules.ui_components import ToolButton

    existing = names.list_datasets(_datasets_dir())
    samplers, sampler = _sampler_choices()

    with gr.Row(elem_id="lora_studio_dataset"):
        with gr.Column(scale=1, elem_id="lora_studio_ds_left"):
            with gr.Row():
                dataset = gr.Dropdown(label="Dataset", choices=existing, value=None, elem_id="lora_studio_ds_choice",
                                      info="folders in the datasets folder (Settings > LoRA Studio)")
                refresh = ToolButton("\U0001f504", elem_id="lora_studio_ds_refresh", tooltip="List the datasets again")
            summary = gr.Markdown("Pick a dataset, or create one below from a folder or an upload of photos.",
                                  elem_id="lora_studio_ds_summary")
            with gr.Row():
                trigger = gr.Textbox(label="Trigger word", elem_id="lora_studio_ds_trigger",
                                     placeholder="e.g. sks", info="a rare word the LoRA learns for the subject")
                class_word = gr.Textbox(label="Class word", elem_id="lora_studio_ds_class",
                                        placeholder="e.g. cat, woman, building", info="what the subject is")
                resolution = gr.Number(label="Resolution", value=512, precision=0, elem_id="lora_studio_ds_resolution",
                                       info="training size in px")

            with gr.Accordion("New dataset from a folder or an upload", open=not existing,
                              elem_id="lora_studio_ds_create") as create_group:
                new_name = gr.Textbox(label="Dataset name", elem_id="lora_studio_ds_new_name",
                                      placeholder="my_cat (an existing name adds the images to it)")
                source = gr.Textbox(label="Folder of photos on the WebUI's machine", elem_id="lora_studio_ds_source",
                                    placeholder="/path/to/photos — or a kohya folder, copied as it is")
                upload = gr.File(label="…or upload images (and their .txt captions)", file_count="multiple",
                                 file_types=["image", ".txt", ".caption"], elem_id="lora_studio_ds_upload")
                repeats = gr.Number(label="Repeats", value=10, precision=0, elem_id="lora_studio_ds_repeats",
                                    info="kohya folder '<repeats>_<trigger> <class>'; the presets suggest images × "
                                         "repeats ≈ 200–400")
                create = gr.Button("Create dataset (copies; the originals are never changed)",
                                   elem_id="lora_studio_ds_create_button")

            created_message = gr.HTML("", elem_id="lora_studio_ds_create_result")

            with gr.Accordion("Health report", open=True, elem_id="lora_studio_ds_health_group"):
                check = gr.Button("Check the dataset", variant="primary", elem_id="lora_studio_ds_check")
                health = gr.Markdown("", elem_id="lora_studio_ds_health")
                problems = gr.Gallery(label="Images with problems (click one to see it larger)",
                                      elem_id="lora_studio_ds_problems", columns=6, height="auto",
                                      object_fit="cover", show_label=True, visible=False)

            with gr.Accordion("Preprocess into a new dataset", open=False, elem_id="lora_studio_ds_preprocess_group"):
                pp_name = gr.Textbox(label="New dataset name", elem_id="lora_studio_ds_pp_name",
                                     placeholder="<dataset>-512")
                crop = gr.Radio(label="Crop", choices=list(actions.CROP_LABELS), value=next(iter(actions.CROP_LABELS)),
                                elem_id="lora_studio_ds_crop")
                flip = gr.Checkbox(label="Add mirrored copies (only for subjects that look the same mirrored)",
                                   value=False, elem_id="lora_studio_ds_flip")
                with gr.Row():
                    pp_button = gr.Button("Preprocess", elem_id="lora_studio_ds_preprocess")
                    pp_stop = gr.Button("Stop", elem_id="lora_studio_ds_preprocess_stop")
                pp_result = _job_html("lora_studio_ds_preprocess_result")

            with gr.Accordion("Captions", open=False, elem_id="lora_studio_ds_captions_group"):
                captioner = gr.Radio(label="Captioner", choices=list(CAPTIONERS), value=CAPTIONERS[0],
                                     elem_id="lora_studio_ds_captioner")
                overwrite = gr.Checkbox(label="Replace existing captions", value=False,
                                        elem_id="lora_studio_ds_overwrite")
                with gr.Row():
                    caption_button = gr.Button("Caption images", elem_id="lora_studio_ds_caption")
                    caption_stop = gr.Button("Stop", elem_id="lora_studio_ds_caption_stop")
                caption_result = _job_html("lora_studio_ds_caption_result")
                prefix = gr.Button("Prefix trigger word (and class word) to every caption",
                                   elem_id="lora_studio_ds_prefix")
                with gr.Row():
                    find = gr.Textbox(label="Find", elem_id="lora_studio_ds_find")
                    replace = gr.Textbox(label="Replace with", elem_id="lora_studio_ds_replace",
                                         placeholder="empty = remove")
                with gr.Row():
                    regex = gr.Checkbox(label="Regular expression", value=False, elem_id="lora_studio_ds_regex")
                    ignore_case = gr.Checkbox(label="Ignore case", value=True, elem_id="lora_studio_ds_ignore_case")
                    replace_button = gr.Button("Replace in all captions", elem_id="lora_studio_ds_replace_button")
                caption_message = gr.HTML("", elem_id="lora_studio_ds_caption_message")
                tags_button = gr.Button("Tag frequency", elem_id="lora_studio_ds_tags_button")
                tags = gr.HTML("", elem_id="lora_studio_ds_tags")

        with gr.Column(scale=1, elem_id="lora_studio_ds_right"):
            with gr.Group(elem_id="lora_studio_ds_editor"):
                images = gr.Gallery(label="Training images — click one to edit its caption",
                                    elem_id="lora_studio_ds_images", columns=6, height="auto", object_fit="cover",
                                    allow_preview=False, show_label=True)
                with gr.Row():
                    selected_image = gr.Image(label="Selected", interactive=False, type="filepath", height=256,
                                              elem_id="lora_studio_ds_selected_image")
                    with gr.Column():
                        caption_file = gr.Markdown("", elem_id="lora_studio_ds_caption_file")
                        caption_text = gr.Textbox(label="Caption", lines=5, elem_id="lora_studio_ds_caption_text")
                        save = gr.Button("Save caption", variant="primary", elem_id="lora_studio_ds_save_caption")
                        save_result = gr.HTML("", elem_id="lora_studio_ds_save_result")
            image_paths = gr.State([])
            selected_path = gr.State("")

            with gr.Accordion("Class images (DreamBooth prior preservation)", open=False,
                              elem_id="lora_studio_ds_class_group"):
                gr.Markdown("Made with the loaded checkpoint into `<dataset>/reg/1_<class>/`, N per training image; "
                            "image *i* has seed base + *i*, so a stopped run continues where it stopped.",
                            elem_classes=["lora-studio-ds-hint"])
                class_source = gr.Radio(label="Prompt", choices=[CLASS_FROM_PROMPT, CLASS_FROM_CAPTIONS],
                                        value=CLASS_FROM_PROMPT, elem_id="lora_studio_ds_class_source")
                class_prompt = gr.Textbox(label="Class prompt", elem_id="lora_studio_ds_class_prompt",
                                          placeholder="empty = the class word, e.g. 'a photo of a cat'")
                class_negative = gr.Textbox(label="Negative prompt", elem_id="lora_studio_ds_class_negative")
                with gr.Row():
                    per_image = gr.Number(label="Images per training image", value=10, precision=0,
                                          elem_id="lora_studio_ds_class_per_image")
                    class_seed = gr.Number(label="Base seed", value=1234, precision=0,
                                           elem_id="lora_studio_ds_class_seed")
                    class_batch = gr.Number(label="Batch size", value=1, precision=0,
                                            elem_id="lora_studio_ds_class_batch")
                with gr.Row():
                    class_sampler = gr.Dropdown(label="Sampler", choices=samplers, value=sampler,
                                                elem_id="lora_studio_ds_class_sampler")
                    class_steps = gr.Number(label="Steps", value=20, precision=0, elem_id="lora_studio_ds_class_steps")
                    class_cfg = gr.Number(label="CFG scale", value=7.0, elem_id="lora_studio_ds_class_cfg")
                with gr.Row():
                    class_width = gr.Number(label="Width", value=512, precision=0, elem_id="lora_studio_ds_class_width")
                    class_height = gr.Number(label="Height", value=512, precision=0,
                                             elem_id="lora_studio_ds_class_height")
                with gr.Row():
                    class_button = gr.Button("Generate class images", elem_id="lora_studio_ds_class_generate")
                    class_stop = gr.Button("Stop", elem_id="lora_studio_ds_class_stop")
                class_result = _job_html("lora_studio_ds_class_result")
                class_gallery = gr.Gallery(label="Class images", elem_id="lora_studio_ds_class_gallery", columns=8,
                                           height="auto", object_fit="cover")

            use_button = gr.Button("Use in Train ➜", variant="primary", elem_id="lora_studio_ds_use_in_train")
            use_message = gr.HTML("", elem_id="lora_studio_ds_use_result")

    task_id = gr.Textbox(visible=False)
    for component in (dataset, trigger, class_word, resolution, new_name, source, repeats, pp_name, crop, flip,
                      captioner, overwrite, find, replace, regex, ignore_case, caption_text, class_source,
                      class_prompt, class_negative, per_image, class_sampler, class_steps, class_cfg, class_width,
                      class_height, class_seed, class_batch):
        # A1111 keys saved UI defaults (ui-config.json) by tab and label: "LoRA Studio/Batch size" would be
        # shared with the Train tab's field of that label. These values belong to a dataset, not to defaults.
        component.do_not_save_to_config = True

    # ---- pick / create ------------------------------------------------------------------------
    def pick(name, resolution_value):
        no_problems = gr.update(value=[], visible=False)
        if not name:
            return ["Pick a dataset, or create one below.", gr.update(), gr.update(), [], [], "", no_problems,
                    gr.update(), None, "", "", "", ""]
        try:
            info = actions.open_dataset(_datasets_dir(), name)
            items = actions.editor_items(info.root) if not info.error else []
        except Exception as error:  # an unreadable folder must not break the tab
            return [f"⚠ {error}", gr.update(), gr.update(), [], [], "", no_problems, gr.update(), None, "", "", "",
                    ""]
        line = info.line if not info.error else f"⚠ {info.line}"
        return [line, info.trigger, info.class_word, [(str(i.thumbnail), i.label) for i in items],
                [str(i.image) for i in items], "", no_problems,
                actions.default_preprocessed_name(name, resolution_value), None, "", "", "", ""]

    pick_outputs = [summary, trigger, class_word, images, image_paths, health, problems, pp_name,
                    selected_image, selected_path, caption_text, caption_file, tags]
    dataset.change(fn=pick, inputs=[dataset, resolution], outputs=pick_outputs, show_progress=False)
    refresh.click(fn=lambda: gr.update(choices=names.list_datasets(_datasets_dir())), inputs=[], outputs=[dataset],
                  show_progress=False)

    def create_clicked(name, source_value, files, trigger_value, class_value, repeats_value):
        uploads = [getattr(f, "name", f) for f in files or []]
        outcome = actions.create_dataset(_datasets_dir(), name, source_value, uploads, trigger_value, class_value,
                                         repeats_value)
        choices = names.list_datasets(_datasets_dir())
        if not outcome.ok:
            return gr.update(choices=choices), outcome.html(), gr.update()
        # The result stays visible above the closed accordion; the health report comes next.
        return gr.update(choices=choices, value=outcome.dataset), outcome.html(), gr.Accordion.update(open=False)

    create.click(fn=create_clicked, inputs=[new_name, source, upload, trigger, class_word, repeats],
                 outputs=[dataset, created_message, create_group])

    # ---- health ------------------------------------------------------------------------------
    def check_clicked(name, resolution_value, trigger_value):
        if not name:
            return "⚠ Pick a dataset first.", gr.update(value=[], visible=False)
        view = actions.health_report(_root(name), resolution_value, trigger_value)
        return view.markdown, gr.update(value=[(str(p.thumbnail), p.caption) for p in view.problems],
                                        visible=bool(view.problems))

    check.click(fn=check_clicked, inputs=[dataset, resolution, trigger], outputs=[health, problems])

    # ---- preprocess / captions (A1111's queue and progress bar) -------------------------------
    def preprocess_job(id_task, name, new, resolution_value, crop_value, flip_value):
        from ..job_progress import StateProgress

        if not name:
            return gr.update(), actions.Outcome("⚠ Pick a dataset first.", ok=False).html()
        with _job():
            outcome = actions.preprocess(_datasets_dir(), name, new, resolution_value, crop_value, flip_value,
                                         on_progress=StateProgress("preprocess"))
        if outcome.ok and outcome.dataset:
            return gr.update(choices=names.list_datasets(_datasets_dir()), value=outcome.dataset), outcome.html()
        return gr.update(), outcome.html()

    pp_button.click(fn=wrap_gradio_gpu_call(preprocess_job, extra_outputs=[gr.update()]),
                    _js="lora_studio_dataset_preprocess",
                    inputs=[task_id, dataset, pp_name, resolution, crop, flip], outputs=[dataset, pp_result],
                    show_progress=False)

    def caption_job(id_task, name, captioner_name, trigger_value, class_value, overwrite_value, selected):
        from .interrogators import a1111_captioner
        from ..job_progress import StateProgress

        if not name:
            return gr.update(), gr.update(), actions.Outcome("⚠ Pick a dataset first.", ok=False).html()
        root = _root(name)
        with _job():
            outcome = actions.caption_dataset(root, a1111_captioner(captioner_name), trigger_value, class_value,
                                              overwrite_value, on_progress=StateProgress("captions"))
        return _summary_line(name), _reload_caption(root, selected), outcome.html()

    caption_button.click(fn=wrap_gradio_gpu_call(caption_job, extra_outputs=[gr.update(), gr.update()]),
                         _js="lora_studio_dataset_caption",
                         inputs=[task_id, dataset, captioner, trigger, class_word, overwrite, selected_path],
                         outputs=[summary, caption_text, caption_result], show_progress=False)

    for stop in (pp_stop, caption_stop):
        stop.click(fn=_stop, inputs=[], outputs=[], show_progress=False)

    def prefix_clicked(name, trigger_value, class_value, selected):
        if not name:
            return gr.update(), "<div class='error'>⚠ Pick a dataset first.</div>"
        outcome = actions.add_trigger(_root(name), trigger_value, class_value)
        return _reload_caption(_root(name), selected), outcome.html()

    prefix.click(fn=prefix_clicked, inputs=[dataset, trigger, class_word, selected_path],
                 outputs=[caption_text, caption_message])

    def replace_clicked(name, find_value, replace_value, regex_value, ignore_value, selected):
        if not name:
            return gr.update(), "<div class='error'>⚠ Pick a dataset first.</div>"
        outcome = actions.replace_in_captions(_root(name), find_value, replace_value, regex_value, ignore_value)
        return _reload_caption(_root(name), selected), outcome.html()

    replace_button.click(fn=replace_clicked, inputs=[dataset, find, replace, regex, ignore_case, selected_path],
                         outputs=[caption_text, caption_message])
    tags_button.click(fn=lambda name: actions.tag_table_html(_root(name)) if name else "",
                      inputs=[dataset], outputs=[tags])

    # ---- caption editor ----------------------------------------------------------------------
    def select_image(paths, name, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not name or not 0 <= index < len(paths):
            return None, "", "", "", ""
        path = paths[index]
        try:
            text, where = actions.read_caption(_root(name), path)
        except Exception as error:
            return None, "", "", f"⚠ {error}", ""
        return str(thumbnail(Path(path), side=512)), path, text, where, ""

    images.select(fn=select_image, inputs=[image_paths, dataset],
                  outputs=[selected_image, selected_path, caption_text, caption_file, save_result],
                  show_progress=False)

    def save_clicked(name, path, text):
        if not name:
            return "<div class='error'>⚠ Pick a dataset first.</div>", gr.update()
        outcome = actions.save_caption(_root(name), path, text)
        return outcome.html(), _summary_line(name) if outcome.ok else gr.update()

    save.click(fn=save_clicked, inputs=[dataset, selected_path, caption_text], outputs=[save_result, summary],
               show_progress=False)

    # ---- class images ------------------------------------------------------------------------
    def class_job(id_task, name, trigger_value, class_value, source_value, prompt, negative, per, sampler_name,
                  steps, cfg, width, height, seed, batch):
        from ..job_progress import StateProgress

        if not name:
            return gr.update(), actions.Outcome("⚠ Pick a dataset first.", ok=False).html()
        values = dict(class_word=class_value or "", trigger=trigger_value or "", prompt=prompt or "",
                      from_captions=source_value == CLASS_FROM_CAPTIONS, negative_prompt=negative or "",
                      per_image=per, sampler=sampler_name, steps=steps, cfg_scale=cfg, width=width, height=height,
                      seed=seed, batch_size=batch)
        progress = StateProgress("class images", raise_when_stopped=False)
        with _job():
            try:
                generate = class_images.a1111_generate()
            except Exception as error:
                return gr.update(), actions.Outcome(f"⚠ {error}", ok=False).html()
            outcome, shown = actions.make_class_images(_root(name), values, generate, on_progress=progress,
                                                       should_stop=progress.stopped)
        return [str(p) for p in shown], outcome.html()

    class_button.click(fn=wrap_gradio_gpu_call(class_job, extra_outputs=[gr.update()]),
                       _js="lora_studio_dataset_class_images",
                       inputs=[task_id, dataset, trigger, class_word, class_source, class_prompt, class_negative,
                               per_image, class_sampler, class_steps, class_cfg, class_width, class_height,
                               class_seed, class_batch],
                       outputs=[class_gallery, class_result], show_progress=False)
    class_stop.click(fn=_stop, inputs=[], outputs=[], show_progress=False)

    return DatasetTab(dataset=dataset, trigger=trigger, use_in_train=use_button, use_message=use_message)


def connect_use_in_train(tab: DatasetTab, train: dict, tabs: gr.Tabs) -> None:
    """"Use in Train": fill the Train sub-tab (dataset folder, class-image folder + method, trigger word, name
    when empty, its summary line) and switch to it. `train` is what `create_train_tab` returns."""
    from ..train import actions as train_actions

    fields = train["fields"]

    def use(name, trigger_value, lora_name, caption_extension):
        if not name:
            return [gr.update()] * 7 + ["<div class='error'>⚠ Pick a dataset first.</div>"]
        values = actions.use_in_train(_root(name), trigger_value, lora_name)
        line, trigger_filled = train_actions.dataset_line(values.train_dir, values.reg_dir, caption_extension,
                                                          values.trigger)
        return [values.train_dir, values.reg_dir, trigger_filled, values.name, values.method, line,
                gr.Tabs.update(selected="train"), actions.Outcome(values.message).html()]

    tab.use_in_train.click(
        fn=use, inputs=[tab.dataset, tab.trigger, fields["output.name"], fields["data.caption_extension"]],
        outputs=[fields["data.train_dir"], fields["data.reg_dir"], fields["output.trigger_word"],
                 fields["output.name"], train["method"], train["dataset_summary"], tabs, tab.use_message],
        show_progress=False)


# ---- helpers -------------------------------------------------------------------------------------

class _job:
    """Marks a job of this tab as running, so that Stop interrupts it and nothing else."""

    def __enter__(self):
        _running.set()
        return self

    def __exit__(self, *exc) -> None:
        _running.clear()


def _stop() -> None:
    if _running.is_set():
        from modules import shared

        shared.state.interrupt()


def _summary_line(name: str) -> str:
    try:
        info = actions.open_dataset(_datasets_dir(), name)
    except Exception as error:
        return f"⚠ {error}"
    return info.line if not info.error else f"⚠ {info.line}"


def _reload_caption(root: Path, selected: str):
    if not selected:
        return gr.update()
    try:
        return actions.read_caption(root, selected)[0]
    except Exception:
        return gr.update()
