"""What the Train tab's buttons do, without gradio: plain values in, plain values out.

`ui.py` wires these to components; the WebUI (`runtime`) is passed in or imported lazily,
so everything here runs in tests with the WebUI faked.
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ...errors import LoraStudioError
from . import form
from .dataset_summary import summarize_dataset
from .estimate import DeviceInfo, estimate, format_duration
from ..backend.outputs import DEFAULT_PREFERRED_WEIGHT
from .presets import describe, find_preset
from .runs import RunRecord, list_runs
from ..backend.service import CANCELLED, FAILED, FINISHED, RunStatus


@dataclass(frozen=True)
class Folders:
    lora_dir: Path
    runs_dir: Path
    checkpoint_dir: Optional[Path] = None  # models/Stable-diffusion: a full fine-tune's checkpoints

    @property
    def run_roots(self) -> list[Path]:
        """Where runs are listed from: the runs folder, and the CLI's default beside the LoRAs."""
        return list(dict.fromkeys([Path(self.runs_dir), Path(self.lora_dir) / "lora_studio_runs"]))


def dataset_line(train_dir: str, reg_dir: str, caption_extension: str, trigger_word: str) -> tuple[str, str]:
    """(summary line, trigger word): the trigger word is filled from the folder names when empty."""
    summary = summarize_dataset(train_dir, reg_dir, caption_extension)
    trigger = trigger_word.strip() or summary.trigger_word
    return html.escape(summary.line), trigger


def name_status(name: str, overwrite: bool, lora_dir: Path) -> str:
    check = form.check_output_name(name, lora_dir, overwrite)
    mark = "✔" if check.ok and not check.exists else "⚠"
    return f"{mark} {html.escape(check.message)}"


def config_from_form(method: str, values: Sequence[Any], folders: Folders):
    config = form.config_from_values(form.values_from_list(values), method)
    return form.place_in_webui(config, folders.lora_dir, folders.runs_dir, folders.checkpoint_dir)


def estimate_markdown(method: str, values: Sequence[Any], folders: Folders, device: DeviceInfo,
                      family: str = "sd1", sample_steps: int = 20) -> str:
    try:
        config = config_from_form(method, values, folders)
        return estimate(config, device, family, sample_steps, final_sample=True).markdown()  # the card's preview
    except LoraStudioError as error:
        return f"⚠ {html.escape(form.error_text(error))}"


def preset_values(preset_label: str, family: str = "sd1") -> tuple[str, dict[str, Any]]:
    """(description, {field key: value}) of a preset, for the loaded model's family."""
    preset = find_preset(preset_label, family)
    return describe(preset), dict(preset.values)


@dataclass
class StartOutcome:
    samples: list = field(default_factory=list)  # [(path, caption)] for the gallery
    prompt: str = ""  # for "Send to txt2img"
    result_html: str = ""
    started: bool = False


def start_training(resume: bool, method: str, values: Sequence[Any], folders: Folders,
                   run: Callable[..., RunStatus], preferred_weight: float = DEFAULT_PREFERRED_WEIGHT) -> StartOutcome:
    """Check the form, then run (blocking; the caller holds the queue) and describe the result."""
    try:
        config = config_from_form(method, values, folders)
        checked = form.check_before_start(config, resume)  # the pre-flight, before the queue and the model
        status = run(config, resume, checked)
    except LoraStudioError as error:
        return StartOutcome(result_html=error_html(form.error_text(error)))
    samples = [(path, f"step {step}") for step, path in status.samples if Path(path).is_file()]
    prompt = ""
    full = config.network.method == "full"
    if status.state == FINISHED:  # a new checkpoint is picked at the top of the page, not in the prompt
        prompt = config.output.trigger_word.strip() if full else form.lora_prompt(
            config.output.name, preferred_weight, config.output.trigger_word)
    return StartOutcome(samples, prompt, result_html(status, full), started=True)


def result_html(status: RunStatus, full: bool = False) -> str:
    return _outcome_html(status, full) + left_out_html(status.left_out)


def left_out_html(left_out: list) -> str:
    """The pre-flight's one list of files the run did not train on, each with why (escaped)."""
    if not left_out:
        return ""
    rows = "".join(f"<li><code>{html.escape(str(item['path']))}</code>: {html.escape(item['reason'])}</li>"
                   for item in left_out)
    return (f"<details class='lora-studio-left-out' open><summary>Left out {len(left_out)} file(s) that cannot be "
            f"trained on</summary><ul>{rows}</ul></details>")


def _outcome_html(status: RunStatus, full: bool) -> str:
    if status.state == FINISHED:
        files = "".join(f"<li>{html.escape(Path(f).name)}</li>" for f in status.files)
        where = ("It is in the checkpoint list now (refresh the list at the top of the page and pick it); the "
                 "model you trained from is loaded as before." if full
                 else "It is in the Lora list now; <i>Send to txt2img</i> tries it.")
        return (f"<div class='lora-studio-done'>✔ Saved <b>{html.escape(Path(status.result).name)}</b> after "
                f"{status.step} steps in {format_duration(status.elapsed_s)}. {where}<ul>{files}</ul></div>")
    if status.state == CANCELLED:
        return (f"<div class='lora-studio-cancelled'>Stopped at step {status.step}/{status.total_steps}: "
                f"{html.escape(status.error)}. To continue, tick <i>Resume</i> and press Start with the same "
                "settings.</div>")
    if status.state == FAILED:
        return error_html(status.error or "Training failed.")
    return f"<div>{html.escape(status.state)}</div>"


def error_html(message: str) -> str:
    return f"<div class='error'>{html.escape(message)}</div>"


def cancel_training(cancel: Callable[[], bool]) -> str:
    if cancel():
        return "Stopping at the next step; the run saves a resumable state."
    return "No training is running."


def export_settings(method: str, values: Sequence[Any], folders: Folders, checkpoint: str = "") -> tuple[Optional[str], str]:
    """(path of a run.toml for download, message)."""
    try:
        config = config_from_form(method, values, folders)
    except LoraStudioError as error:
        return None, f"⚠ {html.escape(form.error_text(error))}"
    name = form.check_output_name(config.output.name, folders.lora_dir, True).name or "settings"
    folder = Path(tempfile.mkdtemp(prefix="lora_studio_export_"))
    path = folder / f"{name}.toml"
    path.write_text(form.export_toml(config, checkpoint), encoding="utf-8")
    return str(path), f"Exported {path.name}: `python -m lib_training train --config {path.name}`"


def run_choices(folders: Folders) -> tuple[list[RunRecord], list[str]]:
    """The runs and their picker labels: the run's name (its folder's parent added when two share a name)."""
    records = list_runs(folders.run_roots)
    return records, [label for label, _ in _labelled(records)]


def _labelled(records: list[RunRecord]) -> list[tuple[str, RunRecord]]:
    names = [r.name for r in records]
    return [(r.name if names.count(r.name) == 1 else f"{r.name} ({r.folder.parent})", r) for r in records]


def load_run(label: str, folders: Folders) -> tuple[Optional[str], Optional[list], str]:
    """(method, form values in FIELDS order, message) from the config.toml of the run picked by its label."""
    if not label:
        return None, None, "Choose a run first."
    records = [r for shown, r in _labelled(list_runs(folders.run_roots)) if shown == label]
    if not records or records[0].config is None:
        problem = records[0].problem if records else "it is no longer there"
        return None, None, f"⚠ Cannot load {html.escape(label)}: {html.escape(problem)}"
    record = records[0]
    values = form.values_from_config(record.config)
    hint = " It can be resumed: tick Resume and press Start." if record.resumable else ""
    return form.method_of(record.config), form.values_to_list(values), f"Loaded the settings of {html.escape(record.name)}.{hint}"
