"""In a browser, against a real A1111 (set WEBUI_DIR): train from the LoRA Studio tab, then use the LoRA.

What a user does, click by click, in headless Chromium driven by Playwright: open the WebUI, the
"LoRA Studio" tab, "Train"; fill the dataset folder and a tiny run (64 px, 4 steps, rank 4); press
Start; watch the progress bar and the loss chart; when it is done, "Send to txt2img"; then in
txt2img open the Lora tab of extra networks, click the new LoRA's card and Generate.

Skipped unless all of these are there:
  WEBUI_DIR=/path/to/stable-diffusion-webui   prepared as in README, "Testing against a real WebUI"
  /usr/bin/chromium                           `apt-get install -y chromium` (Playwright's own browser
                                              downloads are not used)
  the `playwright` package                    `pip install -r tests/requirements-a1111.txt`

    OMP_NUM_THREADS=1 WEBUI_DIR=/work/webui .venv-tests/a1111/bin/python -m pytest tests/test_webui_browser.py -s

Screenshots (for a person to look at) go to tests/artifacts/browser/. Takes about two minutes on CPU.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

WEBUI_DIR = os.environ.get("WEBUI_DIR")
CHROMIUM = Path("/usr/bin/chromium")
HOW = ("run: apt-get install -y chromium; pip install -r tests/requirements-a1111.txt; then "
       "WEBUI_DIR=/path/to/stable-diffusion-webui pytest tests/test_webui_browser.py "
       "(WebUI prepared as in README, 'Testing against a real WebUI')")

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(not WEBUI_DIR, reason="needs a real A1111 (WEBUI_DIR unset); " + HOW),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"needs {CHROMIUM}; " + HOW),
    pytest.mark.skipif(sync_playwright is None, reason="needs the playwright package; " + HOW),
]

from conftest import write_photos  # noqa: E402
from webui_server import ARTIFACTS, running_webui  # noqa: E402

SHOTS = ARTIFACTS / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEPS = 4
TRIGGER = "sks"
# The UI waits below are for a CPU shared with other work: model loading and the first
# training step take tens of seconds there.
TRAIN_TIMEOUT_MS = 600_000
UI_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def webui():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with running_webui("webui_browser.log") as server:
        yield server


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser_dataset")
    write_photos(root / f"1_{TRIGGER} cat", names=("chelsea", "astronaut"), size=80,
                 captions={"chelsea": f"{TRIGGER} cat, sitting", "astronaut": f"{TRIGGER} cat, in a suit"})
    return root


@pytest.fixture(scope="module")
def lora_name():
    """A fresh name per run; its files and run folder are removed afterwards."""
    name = "ls_browser_" + uuid.uuid4().hex[:8]
    yield name
    lora_dir = Path(WEBUI_DIR) / "models" / "Lora"
    for path in lora_dir.glob(name + "*"):
        if path.is_file():
            path.unlink()
    for runs in (Path(WEBUI_DIR) / "lora_studio" / "runs", lora_dir / "lora_studio_runs"):
        shutil.rmtree(runs / name, ignore_errors=True)


@pytest.fixture(scope="module")
def page(webui):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = context.new_page()
            tab.set_default_timeout(UI_TIMEOUT_MS)
            errors: list[str] = []
            tab.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}"))
            tab.goto(webui.url, wait_until="domcontentloaded", timeout=120_000)
            # A1111 is ready for clicks once its tabs are drawn and its UI scripts have run.
            tab.locator("#tabs > .tab-nav button").first.wait_for(timeout=120_000)
            tab.wait_for_function("typeof opts !== 'undefined' && Object.keys(opts).length > 0", timeout=120_000)
            tab.page_errors = errors
            yield tab
        finally:
            browser.close()


# ---- helpers ---------------------------------------------------------------------------------

def shot(page, name: str, element=None) -> Path:
    path = SHOTS / f"{name}.png"
    if element is not None:
        element.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    return path


def main_tab(page, title: str):
    page.locator("#tabs > .tab-nav button").filter(has_text=title).first.click()


def text_input(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input[type=text]").first


def markdown(page, elem_id: str):
    """gradio 3.41 gives a Markdown's or HTML's elem_id to both its block and its content: the content."""
    return page.locator(f"#{elem_id}.prose").first


def number_input(page, elem_id: str):
    return page.locator(f"#{elem_id} input[type=number]").first


def set_number(page, elem_id: str, value) -> None:
    box = number_input(page, elem_id)
    box.fill(str(value))
    box.press("Tab")  # gradio clamps and commits on blur


def open_accordion(page, elem_id: str) -> None:
    label = page.locator(f"#{elem_id} > .label-wrap").first
    if "open" not in (label.get_attribute("class") or ""):
        label.click()


def prompt_text(page) -> str:
    return page.locator("#txt2img_prompt textarea").first.input_value()


def script_errors(page) -> list[str]:
    """Uncaught errors in the page's scripts, less one of A1111 1.10 itself: every txt2img Generate
    throws "Cannot read properties of undefined (reading 'props')" in gradio's Blocks (also with
    --disable-extra-extensions, i.e. without this extension)."""
    return [e for e in page.page_errors if not ("reading 'props'" in e and "/assets/Blocks-" in e)]


def chart_ink(page) -> int:
    """Pixels drawn inside the loss chart's plot area (the frame and axis labels lie outside it)."""
    return page.evaluate("""() => {
        const canvas = gradioApp().querySelector('#lora_studio_chart canvas');
        const pad = 36, w = canvas.width, h = canvas.height;
        const data = canvas.getContext('2d').getImageData(pad + 3, 11, w - pad - 14, h - pad - 6).data;
        let ink = 0;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) ink++;
        return ink;
    }""")


# ---- the tests -------------------------------------------------------------------------------

RUN: dict = {}  # what the training test leaves for the tests after it


def test_train_from_the_train_tab(webui, page, dataset, lora_name):
    main_tab(page, "LoRA Studio")
    page.locator("#lora_studio_tabs .tab-nav button").filter(has_text="Train").first.click()
    start = page.locator("#lora_studio_start")
    expect(start).to_be_visible()
    shot(page, "01_train_tab")

    dataset_box = text_input(page, "lora_studio_data_train_dir")
    dataset_box.fill(str(dataset))
    dataset_box.press("Tab")  # the folder is read on blur
    # The summary describes the folder, and the trigger word comes from "1_sks cat".
    expect(markdown(page, "lora_studio_dataset_summary")).not_to_have_text("Choose a dataset folder.")
    expect(text_input(page, "lora_studio_output_trigger_word")).to_have_value(TRIGGER)
    text_input(page, "lora_studio_output_name").fill(lora_name)
    expect(markdown(page, "lora_studio_name_check")).to_contain_text("✔")

    open_accordion(page, "lora_studio_group_network")
    set_number(page, "lora_studio_network_rank", 4)
    set_number(page, "lora_studio_network_alpha", 4)
    open_accordion(page, "lora_studio_group_schedule")
    set_number(page, "lora_studio_train_max_steps", STEPS)
    set_number(page, "lora_studio_train_batch_size", 1)
    set_number(page, "lora_studio_train_save_every_epochs", 0)
    open_accordion(page, "lora_studio_group_data")
    set_number(page, "lora_studio_data_resolution", 64)
    bucketing = page.locator("#lora_studio_data_bucketing input[type=checkbox]")
    if bucketing.is_checked():
        bucketing.uncheck()
    shot(page, "02_form_filled")

    page.locator("#lora_studio_estimate_button").click()
    expect(markdown(page, "lora_studio_estimate")).not_to_contain_text("Press Estimate", timeout=UI_TIMEOUT_MS)
    estimate = markdown(page, "lora_studio_estimate").inner_text()
    assert estimate.startswith(f"{STEPS} steps"), estimate  # the form's values reached the server

    started = time.time()
    start.click()
    # A1111's progress bar above the result, with our textinfo; then the chart with a loss.
    progress = page.locator("#lora_studio_run .progressDiv .progress")
    progress.wait_for(timeout=TRAIN_TIMEOUT_MS)
    info = page.locator("#lora_studio_chart .lora-studio-chart-info")
    seen = {"progress": "", "chart": ""}
    deadline = time.time() + TRAIN_TIMEOUT_MS / 1000
    while time.time() < deadline:
        try:
            seen["progress"] = progress.inner_text(timeout=1000) or seen["progress"]
        except Exception:  # the bar is removed when the job ends
            pass
        seen["chart"] = info.inner_text()
        if "loss" in seen["chart"]:
            break
        time.sleep(0.3)
    during = shot(page, "03_training")
    # The bar sits between Resume and the chart's status line, covering neither.
    bar, above, below = (element.bounding_box() for element in (
        page.locator("#lora_studio_run .progressDiv").first, page.locator("#lora_studio_resume").first, info))
    if bar:  # None when the job ended between the loop and here
        assert above["y"] + above["height"] <= bar["y"] + 1 and bar["y"] + bar["height"] <= below["y"] + 1, (above, bar, below)
    print(f"\nduring training: progress bar {seen['progress']!r}; chart {seen['chart']!r}")
    assert "loss" in seen["chart"], seen
    assert seen["progress"].startswith("LoRA Studio:"), seen  # runtime's shared.state.textinfo

    result = markdown(page, "lora_studio_result")
    expect(result.locator(".lora-studio-done, .error, .lora-studio-cancelled")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    seconds = time.time() - started
    status = webui.get("/internal/lora-studio/status", auth=False)
    assert status["state"] == "finished", (status["error"], status["messages"])
    assert status["step"] == STEPS and status["name"] == lora_name
    assert result.locator(".lora-studio-done").is_visible(), result.inner_text()
    assert f"{lora_name}.safetensors" in result.inner_text()
    # The chart follows the run to its end: its line is drawn and its text gives the last loss.
    expect(info).to_contain_text("finished", timeout=30_000)
    expect(info).to_contain_text("loss")
    assert chart_ink(page) > 50, "the loss chart is empty"
    send_prompt = text_input(page, "lora_studio_send_prompt")
    assert send_prompt.input_value().startswith(f"<lora:{lora_name}:"), send_prompt.input_value()
    assert TRIGGER in send_prompt.input_value()
    page.locator("#lora_studio_chart").scroll_into_view_if_needed()
    shot(page, "04_training_done")
    shot(page, "04b_run_column", page.locator("#lora_studio_run"))
    print(f"training in the tab: {seconds:.1f} s from Start to the result; chart {info.inner_text()!r}; "
          f"screenshot during training: {during}")
    assert (Path(WEBUI_DIR) / "models" / "Lora" / f"{lora_name}.safetensors").is_file()
    assert not script_errors(page), script_errors(page)
    RUN["name"] = lora_name


def test_send_to_txt2img_puts_the_lora_in_the_prompt(page):
    if "name" not in RUN:
        pytest.skip("the training test did not finish")
    name = RUN["name"]
    page.locator("#lora_studio_send_to_txt2img").click()
    expect(page.locator("#tab_txt2img")).to_be_visible()
    page.wait_for_function(f"gradioApp().querySelector('#txt2img_prompt textarea').value.includes('<lora:{name}:')")
    assert TRIGGER in prompt_text(page), prompt_text(page)
    shot(page, "05_sent_to_txt2img")
    assert not script_errors(page), script_errors(page)


def test_lora_card_in_txt2img_then_generate(webui, page):
    if "name" not in RUN:
        pytest.skip("the training test did not finish")
    name = RUN["name"]
    main_tab(page, "txt2img")
    prompt = page.locator("#txt2img_prompt textarea").first
    prompt.fill("a photo of a cat")

    page.locator("#txt2img_extra_tabs > .tab-nav button").filter(has_text="Lora").first.click()
    # lora_studio.js redrew the Lora pages when the run ended: the card is there without pressing
    # the page's Refresh (A1111 draws the cards once, when the page loads).
    card = page.locator(f"#txt2img_lora_cards_html .card[data-name='{name}']").first
    card.wait_for(timeout=UI_TIMEOUT_MS)
    card.scroll_into_view_if_needed()
    shot(page, "06_lora_card")
    card.click()
    page.wait_for_function(f"gradioApp().querySelector('#txt2img_prompt textarea').value.includes('<lora:{name}:')")
    text = prompt_text(page)
    assert text.startswith("a photo of a cat") and TRIGGER in text.split(f"<lora:{name}:", 1)[1], text

    # A small, fast image: 64x64, one step (the sliders' number boxes on the Generation tab).
    page.locator("#txt2img_extra_tabs > .tab-nav button").filter(has_text="Generation").first.click()
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 1)
    page.locator("#txt2img_generate").click()
    infotext = markdown(page, "html_info_txt2img")
    expect(infotext).to_contain_text("Steps: 1", timeout=300_000)  # written with the result
    info = infotext.inner_text()
    page.wait_for_function("""() => {
        const img = gradioApp().querySelector('#txt2img_gallery img');
        return img && img.complete && img.naturalWidth > 0;
    }""")
    size = page.evaluate("() => { const i = gradioApp().querySelector('#txt2img_gallery img');"
                         " return [i.naturalWidth, i.naturalHeight]; }")
    shot(page, "07_generated")
    print(f"\ngenerated {size[0]}x{size[1]}; infotext: {info[:300]!r}")
    assert size == [64, 64], size
    assert f"<lora:{name}:" in info and "Lora hashes" in info, info
    assert not script_errors(page), script_errors(page)
