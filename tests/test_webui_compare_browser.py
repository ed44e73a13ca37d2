"""In a browser, against a real A1111 (set WEBUI_DIR): the Compare sub-tab, click by click.

A tiny 3-epoch LoRA is trained first through the API (as test_webui_compare_live.py does). Then,
in headless Chromium: LoRA Studio -> Compare; choose the run (the prompts fill in from its trigger
word and class); weights 0 and 1, seeds 1 and 2, 1 step; Generate comparison; watch A1111's
progress bar; read the recommendation, the table and the loss curve; click a cell of the grid;
Send to txt2img; check txt2img's prompt and seed.

Skipped unless WEBUI_DIR, /usr/bin/chromium and the playwright package are there (see
tests/test_webui_browser.py, whose helpers this reuses). Under the WebUI lock, one thread:
    flock /tmp/webui.lock env OMP_NUM_THREADS=1 WEBUI_DIR=/work/webui \
        .venv-tests/a1111/bin/python -m pytest tests/test_webui_compare_browser.py -s
Screenshots: tests/artifacts/browser/cmp_*.png. Takes about four minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from test_webui_browser import (  # noqa: F401  (page is a fixture)
    ARTIFACTS,
    CHROMIUM,
    HOW,
    WEBUI_DIR,
    markdown,
    main_tab,
    page,
    set_number,
    shot,
    sync_playwright,
    text_input,
)

pytestmark = [
    pytest.mark.skipif(not WEBUI_DIR, reason="needs a real A1111 (WEBUI_DIR unset); " + HOW),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"needs {CHROMIUM}; " + HOW),
    pytest.mark.skipif(sync_playwright is None, reason="needs the playwright package; " + HOW),
]

from conftest import write_photos  # noqa: E402
from test_webui_compare_live import TRIGGER, remove_run, tiny_clip_folder, train_epochs  # noqa: E402
from webui_server import running_webui  # noqa: E402

if sync_playwright is not None:
    from playwright.sync_api import expect

GENERATE_TIMEOUT_MS = 900_000


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    clip = tiny_clip_folder(tmp_path_factory.mktemp("tiny_clip"))
    options = {"lora_studio_clip_model": str(clip), "lora_studio_compare_dir": str(tmp_path_factory.mktemp("compare"))}
    with running_webui("webui_compare_browser.log", options) as server:
        yield server


@pytest.fixture(scope="module")
def run_name(webui, tmp_path_factory):
    """Trained before the page loads, so the Compare tab lists it without a refresh."""
    dataset = tmp_path_factory.mktemp("compare_browser_dataset")
    write_photos(dataset / f"1_{TRIGGER} cat", names=("chelsea", "astronaut"), size=80,
                 captions={"chelsea": f"{TRIGGER} cat, sitting", "astronaut": f"{TRIGGER} cat, in a suit"})
    name = "ls_cmpb_" + uuid.uuid4().hex[:8]
    try:
        train_epochs(webui, dataset, name)
        yield name
    finally:
        remove_run(webui, name)


def choose(page, elem_id: str, value: str) -> None:
    """Pick an option of a gradio 3.41 dropdown."""
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"#{elem_id} ul.options li").filter(has_text=value).first.click()


def test_compare_tab_generates_a_grid_with_numbers_and_a_recommendation(webui, run_name, page):
    main_tab(page, "LoRA Studio")
    page.locator("#lora_studio_tabs .tab-nav button").filter(has_text="Compare").first.click()
    expect(page.locator("#lora_studio_compare_generate")).to_be_visible()
    shot(page, "cmp_01_compare_tab")

    choose(page, "lora_studio_compare_run", run_name)
    # the run fills the prompts from its trigger word and class, its size, and lists its files
    expect(text_input(page, "lora_studio_compare_prompts")).to_have_value("a photo of sks cat")
    expect(text_input(page, "lora_studio_compare_class")).to_have_value("a photo of a cat")
    expect(markdown(page, "lora_studio_compare_files_info")).to_contain_text(f"{run_name} epoch 2")
    weights = text_input(page, "lora_studio_compare_weights")
    weights.fill("0, 1")
    weights.press("Tab")
    page.locator("#lora_studio_compare_settings > .label-wrap").first.click()
    set_number(page, "lora_studio_compare_steps", 1)
    set_number(page, "lora_studio_compare_cfg", 1)
    plan = markdown(page, "lora_studio_compare_plan")
    expect(plan).to_contain_text("3 file(s) × 2 weight(s) × 2 prompt(s) × 2 seed(s) → 16 images at 64x64")
    shot(page, "cmp_02_form_filled")

    started = time.time()
    page.locator("#lora_studio_compare_generate").click()
    progress = page.locator("#lora_studio_compare_results .progressDiv .progress")
    progress.wait_for(timeout=GENERATE_TIMEOUT_MS)
    seen = ""
    deadline = time.time() + 120
    while time.time() < deadline and "LoRA Studio" not in seen:
        try:
            seen = progress.inner_text(timeout=1000) or seen
        except Exception:  # the bar is removed when the job ends
            break
        time.sleep(0.5)
    shot(page, "cmp_03_generating")
    status = markdown(page, "lora_studio_compare_status")
    expect(status).to_contain_text("✔", timeout=GENERATE_TIMEOUT_MS)
    seconds = time.time() - started
    print(f"\nprogress bar during the grid: {seen!r}; {seconds:.1f} s to the result: {status.inner_text()!r}")
    assert "LoRA Studio: image" in seen, seen

    recommendation = markdown(page, "lora_studio_compare_recommendation")
    text = recommendation.inner_text()
    assert text.startswith("Recommended:") or text.startswith("No choice within bounds"), text
    assert "fidelity" in text and "drift" in text and "diversity" in text, text
    rows = page.locator("#lora_studio_compare_table tbody tr")
    assert rows.count() == 4, rows.count()  # base model + 3 files at weight 1
    assert page.locator("#lora_studio_compare_table tbody").inner_text().count("★") == 1  # the chosen row
    expect(page.locator("#lora_studio_compare_curves img")).to_be_visible()
    page.locator("#lora_studio_compare_results").scroll_into_view_if_needed()
    shot(page, "cmp_04_results")
    shot(page, "cmp_04b_results_column", page.locator("#lora_studio_compare_results"))

    # the recommended cell is selected already; clicking a cell of the weight-1 column selects that one
    selected = text_input(page, "lora_studio_compare_selected")
    assert "@ 1, seed 1" in selected.input_value(), selected.input_value()
    image = page.locator("#lora_studio_compare_grid img").first
    box = image.bounding_box()
    size = page.evaluate("() => { const i = gradioApp().querySelector('#lora_studio_compare_grid img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    # click near the bottom-right corner of the picture: the last row (final file, class prompt, seed 2),
    # the weight-1 column (the image is scaled to fit its box, centred)
    scale = min(box["width"] / size[0], box["height"] / size[1])
    shown = (size[0] * scale, size[1] * scale)
    x0 = box["x"] + (box["width"] - shown[0]) / 2
    y0 = box["y"] + (box["height"] - shown[1]) / 2
    image.click(position={"x": x0 - box["x"] + shown[0] * 0.97, "y": y0 - box["y"] + shown[1] * 0.99})
    expect(selected).to_have_value(f"{run_name} (final) @ 1, seed 2 (Euler a, 1 step, CFG 1, 64x64)",
                                   timeout=30_000)
    prompt_box = text_input(page, "lora_studio_compare_send_prompt")
    assert prompt_box.input_value() == f"a photo of a cat, <lora:{run_name}:1>", prompt_box.input_value()
    shot(page, "cmp_05_cell_selected", page.locator("#lora_studio_compare_send_row"))

    page.locator("#lora_studio_compare_send").click()
    expect(page.locator("#tab_txt2img")).to_be_visible()
    # A1111 reads the cell's parameters (its "read generation parameters" button): the plain prompt stays
    cell_prompt = f"a photo of a cat, <lora:{run_name}:1>"
    page.wait_for_function(f"gradioApp().querySelector('#txt2img_prompt textarea').value === {json.dumps(cell_prompt)}",
                           timeout=30_000)
    expect(page.locator("#txt2img_sampling input").first).to_have_value("Euler a", timeout=30_000)
    assert page.locator("#txt2img_seed input").first.input_value() == "2"
    assert page.locator("#txt2img_steps input[type=number]").first.input_value() == "1"
    assert page.locator("#txt2img_cfg_scale input[type=number]").first.input_value() == "1"
    assert page.locator("#txt2img_width input[type=number]").first.input_value() == "64"
    shot(page, "cmp_06_sent_to_txt2img")
    (ARTIFACTS / "compare_browser.json").write_text(json.dumps(
        {"seconds_to_result": round(seconds, 1), "images": 16, "status": status.inner_text(),
         "recommendation": text}, indent=2, ensure_ascii=False))
    assert not page.page_errors, page.page_errors
