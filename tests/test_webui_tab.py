"""The tab's wiring: JavaScript names and element ids agree; the gradio layout builds with A1111 faked.

The layout test needs gradio 3.41, which the test venvs do not install (A1111 brings it). Run it with
A1111's venv on the path, e.g.:
    PYTHONPATH=/path/to/stable-diffusion-webui/venv/lib/python3.10/site-packages \
        .venv-tests/a1111/bin/python -m pytest tests/test_webui_tab.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
JS = (ROOT / "javascript" / "lora_studio.js").read_text(encoding="utf-8")
UI_SOURCES = "".join((ROOT / "lib_training" / "webui" / name).read_text(encoding="utf-8")
                     for name in ("train/ui.py", "ui_tab.py"))


def test_every_js_callback_the_tab_names_is_defined():
    names = set(re.findall(r'_js="(\w+)"', UI_SOURCES))
    assert {"lora_studio_start", "lora_studio_send_to_txt2img"} <= names
    for name in names:
        assert re.search(rf"^function {name}\(", JS, re.M), f"{name} is not defined in javascript/lora_studio.js"


def test_start_follows_a1111s_submit_pattern():
    body = JS[JS.index("function lora_studio_start("):JS.index("function lora_studio_send_to_txt2img(")]
    assert "randomId()" in body and "requestProgress(id," in body and "res[0] = id" in body


def test_elements_the_script_looks_up_are_created_by_the_tab():
    for element_id in set(re.findall(r"getElementById\('(\w+)'\)", JS)):
        assert element_id in UI_SOURCES, f"#{element_id} is used by the script but not created by the tab"
    assert "#txt2img_prompt textarea" in JS and "updateInput(textarea)" in JS and "switch_to_txt2img()" in JS


def test_the_script_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; `apt-get install nodejs` to syntax-check javascript/lora_studio.js")
    result = subprocess.run([node, "--check", str(ROOT / "javascript" / "lora_studio.js")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_scripts_folder_holds_only_the_entry_point():
    assert sorted(p.name for p in (ROOT / "scripts").iterdir() if p.suffix == ".py") == ["lora_studio.py"]


def test_css_is_scoped_to_the_tab():
    css = (ROOT / "style.css").read_text(encoding="utf-8")
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    selectors = [s.strip() for block in re.findall(r"([^{}]+)\{", css) for s in block.split(",")]
    assert selectors and all(s.startswith("#lora_studio") for s in selectors), selectors


# ---- the gradio layout, with A1111 faked -------------------------------------------------------

@pytest.fixture
def fake_a1111(monkeypatch, tmp_path):
    gr = pytest.importorskip("gradio", reason="gradio comes with A1111; see this file's docstring to run it")
    wrapped = []

    def wrap_gradio_gpu_call(fn, extra_outputs=None):
        wrapped.append((fn, extra_outputs))
        return fn

    modules = ModuleType("modules")
    call_queue = ModuleType("modules.call_queue")
    call_queue.wrap_gradio_gpu_call = wrap_gradio_gpu_call
    ui_components = ModuleType("modules.ui_components")
    ui_components.ToolButton = lambda value, elem_id=None, tooltip=None: gr.Button(value, elem_id=elem_id)
    shared = ModuleType("modules.shared")
    shared.opts = SimpleNamespace(lora_studio_default_preset="Style", lora_studio_sample_steps=20)
    shared.cmd_opts = SimpleNamespace(no_half=False)
    shared.sd_model = None
    for name, module in (("modules", modules), ("modules.call_queue", call_queue),
                         ("modules.ui_components", ui_components), ("modules.shared", shared)):
        monkeypatch.setitem(sys.modules, name, module)
    modules.call_queue, modules.ui_components, modules.shared = call_queue, ui_components, shared

    from lib_training.webui.backend import runtime

    (tmp_path / "datasets" / "cats").mkdir(parents=True)
    monkeypatch.setattr(runtime, "lora_dir", lambda: tmp_path / "Lora")
    monkeypatch.setattr(runtime, "runs_dir", lambda: tmp_path / "runs")
    monkeypatch.setattr(runtime, "datasets_dir", lambda: tmp_path / "datasets")
    return gr, wrapped


def test_the_tab_builds_and_wires_start_through_the_queue(fake_a1111):
    gr, wrapped = fake_a1111
    from lib_training.webui.train import form
    from lib_training.webui import ui_tab

    [(block, title, elem_id)] = ui_tab.on_ui_tabs()
    assert (title, elem_id) == ("LoRA Studio", "lora_studio")
    by_elem = {getattr(b, "elem_id", None): b for b in block.blocks.values()}
    for needed in ("lora_studio", "lora_studio_start", "lora_studio_cancel", "lora_studio_gallery",
                   "lora_studio_result", "lora_studio_send_to_txt2img", "lora_studio_preset"):
        assert needed in by_elem, needed
    assert by_elem["lora_studio_preset"].value == "Style"  # the default preset from Settings
    assert by_elem["lora_studio_network_rank"].value == 32
    start = [d for d in block.dependencies if d.get("js") == "lora_studio_start"]
    assert len(start) == 1 and len(start[0]["inputs"]) == 3 + len(form.FIELDS) and len(start[0]["outputs"]) == 4
    fn, extra_outputs = next(w for w in wrapped if w[0].__name__ == "start_training")  # other sub-tabs queue jobs too
    assert len(extra_outputs) == 3  # A1111 appends the error HTML as the 4th output
    preset = [d for d in block.dependencies if by_elem["lora_studio_preset"]._id in d["targets"]]
    assert len(preset[0]["outputs"]) == 1 + len(form.FIELDS)
