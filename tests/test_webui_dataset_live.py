"""Against a real A1111 (set WEBUI_DIR): the Dataset tab's WebUI side.

1. Class images through `/lora-studio/v1/class-images` with A1111's processing on the loaded model
   (2 images at 64x64, 1 step): seeds base + i, the kohya reg folder, resume, and the same pixels as
   txt2img with the same settings (the user's sampler settings reach A1111).
2. In a browser (Playwright + Debian's chromium, helpers from test_webui_browser.py), what a first-time
   user does in the Dataset sub-tab: create a dataset from a folder, read the health report with its
   problem thumbnails, preprocess, edit one caption in the gallery and save it (checked on disk),
   generate class images with A1111's progress bar, "Use in Train".

Skipped without WEBUI_DIR (how to prepare one: README, "Testing against a real WebUI"); the browser
part also needs /usr/bin/chromium and the playwright package. Run one A1111 at a time:

    flock /tmp/webui.lock env OMP_NUM_THREADS=1 WEBUI_DIR=/work/webui \\
        .venv-tests/a1111/bin/python -m pytest tests/test_webui_dataset_live.py -s

Screenshots: tests/artifacts/browser/ds_*.png.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WEBUI_DIR = os.environ.get("WEBUI_DIR")
pytestmark = pytest.mark.skipif(
    not WEBUI_DIR, reason="needs a real A1111: set WEBUI_DIR=/path/to/stable-diffusion-webui "
                          "(prepared as in README, 'Testing against a real WebUI')")

from conftest import write_photos  # noqa: E402
import test_webui_browser as browser_helpers  # noqa: E402
from test_webui_browser import (CHROMIUM, CHROMIUM_ARGS, HOW, main_tab, shot,  # noqa: E402
                                sync_playwright, text_input)
from webui_server import ARTIFACTS, running_webui  # noqa: E402

SHOTS = ARTIFACTS / "browser"
UI_TIMEOUT_MS = 120_000
JOB_TIMEOUT_MS = 600_000
expect = getattr(browser_helpers, "expect", None)  # playwright's; absent without the package
needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"needs {CHROMIUM}; " + HOW)
needs_playwright = pytest.mark.skipif(sync_playwright is None, reason="needs the playwright package; " + HOW)


@pytest.fixture(scope="module")
def datasets_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ls_datasets")


@pytest.fixture(scope="module")
def webui(datasets_dir):
    """A1111 with the datasets folder pointed at a temporary folder (the old value is put back)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with running_webui("webui_dataset_live.log", {"lora_studio_datasets_dir": str(datasets_dir)}) as server:
        yield server


# ---- class images through A1111's processing ---------------------------------------------------

def test_class_images_in_the_webui(webui, datasets_dir):
    root = datasets_dir / "api_cat"
    write_photos(root / "img" / "10_sks cat", names=("chelsea",), size=64, captions={"chelsea": "sks cat, sitting"})
    body = {"dataset": "api_cat", "class_word": "cat", "per_image": 2, "steps": 1, "width": 64, "height": 64,
            "seed": 1234, "cfg_scale": 1, "sampler": "Euler", "from_captions": True, "trigger": "sks"}
    started = time.time()
    result = webui.post("/lora-studio/v1/class-images", body)
    seconds = time.time() - started
    assert not result["error"] and not result["stopped"], result
    folder = root / "reg" / "1_cat"
    assert result["folder"] == str(folder) and result["planned"] == 2 and len(result["written"]) == 2
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "00000.png", "00000.txt", "00001.png", "00001.txt"]
    assert (folder / "00001.txt").read_text() == "cat, sitting\n"
    with Image.open(folder / "00001.png") as image:
        assert image.size == (64, 64)
        assert "Seed: 1235" in image.info.get("parameters", "") and "Steps: 1" in image.info["parameters"]
        generated = np.asarray(image.convert("RGB"), dtype=np.int16)
    # Same settings in txt2img give the same image: the seed and sampler settings reached A1111.
    same = np.asarray(webui.txt2img("cat, sitting", seed=1235), dtype=np.int16)
    assert np.array_equal(generated, same), np.abs(generated - same).max()

    # Resumable: a second call finds both on disk and makes nothing.
    again = webui.post("/lora-studio/v1/class-images", body)
    assert again["existing"] == 2 and again["written"] == [], again
    print(f"\nclass images: 2 at 64x64, 1 step in {seconds:.1f} s; again: {again['message']}")

    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        webui.post("/lora-studio/v1/class-images", body, auth=False)
    assert refused.value.code == 401


# ---- the sub-tab in a browser ------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(webui):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = context.new_page()
            tab.set_default_timeout(UI_TIMEOUT_MS)
            errors: list[str] = []
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(webui.url, wait_until="domcontentloaded", timeout=120_000)
            tab.locator("#tabs > .tab-nav button").first.wait_for(timeout=120_000)
            tab.wait_for_function("typeof opts !== 'undefined' && Object.keys(opts).length > 0", timeout=120_000)
            tab.page_errors = errors
            yield tab
        finally:
            browser.close()


@pytest.fixture(scope="module")
def raw_photos(tmp_path_factory) -> Path:
    """What a user brings: photos (one captioned), one tiny image, one broken download."""
    folder = write_photos(tmp_path_factory.mktemp("raw_photos"), names=("chelsea", "astronaut", "coffee"), size=160,
                          captions={"chelsea": "a cat on a chair"})
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"<!DOCTYPE html><html>404 Not Found</html>")
    return folder


def dataset_choice(page):
    return page.locator("#lora_studio_ds_choice input").first


def expect_text(page, elem_id: str, text: str, timeout: int = UI_TIMEOUT_MS) -> str:
    """Wait until the element (Markdown/HTML content or a textbox) shows `text`; return its text."""
    page.wait_for_function(
        """([id, text]) => {
            const app = gradioApp();
            const el = app.querySelector('#' + id + '.prose') || app.querySelector('#' + id + ' textarea')
                       || app.getElementById(id);
            const value = el ? (el.value !== undefined && el.tagName === 'TEXTAREA' ? el.value : el.innerText) : '';
            return value.includes(text);
        }""", arg=[elem_id, text], timeout=timeout)
    element = page.locator(f"#{elem_id}").first
    return element.inner_text()


@needs_chromium
@needs_playwright
def test_dataset_tab_in_a_browser(webui, page, raw_photos, datasets_dir):
    name = "ls_ds_" + uuid.uuid4().hex[:6]
    main_tab(page, "LoRA Studio")
    page.locator("#lora_studio_tabs .tab-nav button").filter(has_text="Dataset").first.click()
    page.locator("#lora_studio_ds_check").wait_for()
    shot(page, "ds_01_dataset_tab")

    # ---- create from a folder -------------------------------------------------------------
    create = page.locator("#lora_studio_ds_create > .label-wrap").first
    if "open" not in (create.get_attribute("class") or ""):
        create.click()
    text_input(page, "lora_studio_ds_new_name").fill(name)
    text_input(page, "lora_studio_ds_source").fill(str(raw_photos))
    text_input(page, "lora_studio_ds_trigger").fill("sks")
    text_input(page, "lora_studio_ds_class").fill("cat")
    page.locator("#lora_studio_ds_create_button").click()
    created = expect_text(page, "lora_studio_ds_create_result", "Created dataset")
    assert "5 image(s) and 1 caption(s)" in created, created  # copied as they are; the check finds the broken one
    expect_text(page, "lora_studio_ds_summary", "images")
    assert dataset_choice(page).input_value() == name
    assert (datasets_dir / name / "img" / "10_sks cat" / "chelsea.txt").read_text() == "a cat on a chair"
    shot(page, "ds_02_created")

    # ---- health report ---------------------------------------------------------------------
    page.locator("#lora_studio_ds_check").click()
    report = expect_text(page, "lora_studio_ds_health", "Not ready")
    assert "broken file: 1" in report and "smaller than the resolution" in report, report
    problems = page.locator("#lora_studio_ds_problems img")
    problems.first.wait_for()
    assert problems.count() >= 4, problems.count()
    page.locator("#lora_studio_ds_health_group").scroll_into_view_if_needed()
    shot(page, "ds_03_health_report")
    shot(page, "ds_03b_health_column", page.locator("#lora_studio_ds_left"))
    print(f"\nhealth report in the tab:\n{report}")

    # ---- preprocess into a new dataset (A1111's queue + progress bar) --------------------------
    accordion = page.locator("#lora_studio_ds_preprocess_group > .label-wrap").first
    accordion.click()
    resolution = page.locator("#lora_studio_ds_resolution input[type=number]").first
    resolution.fill("64")
    resolution.press("Tab")
    text_input(page, "lora_studio_ds_pp_name").fill(name + "-64")
    page.locator("#lora_studio_ds_preprocess").click()
    done = expect_text(page, "lora_studio_ds_preprocess_result", "Wrote", timeout=JOB_TIMEOUT_MS)
    # A1111's progress bar above the result goes away when the job is done.
    expect(page.locator("#lora_studio_ds_left .progressDiv")).to_have_count(0, timeout=60_000)
    assert "Left out 1 file(s) that cannot be trained on: broken.jpg" in done, done
    page.wait_for_function(f"gradioApp().querySelector('#lora_studio_ds_choice input').value === '{name}-64'")
    new_root = datasets_dir / f"{name}-64"
    assert sorted(p.name for p in (new_root / "img" / "10_sks cat").glob("*.png")) == [
        "0001.png", "0002.png", "0003.png", "0004.png"]

    # ---- caption editor: click an image, edit, save ------------------------------------------
    thumbs = page.locator("#lora_studio_ds_images .thumbnail-item")
    thumbs.first.wait_for()
    assert thumbs.count() == 4
    thumbs.nth(1).click()  # 0002.png = chelsea (astronaut, chelsea, coffee, tiny in name order)
    caption = text_input(page, "lora_studio_ds_caption_text")
    page.wait_for_function("gradioApp().querySelector('#lora_studio_ds_caption_text textarea').value"
                           " === 'a cat on a chair'")
    expect_text(page, "lora_studio_ds_caption_file", "0002.png")
    caption.fill("sks cat, sitting on a wooden chair")
    page.locator("#lora_studio_ds_save_caption").click()
    expect_text(page, "lora_studio_ds_save_result", "Saved 0002.txt")
    on_disk = (new_root / "img" / "10_sks cat" / "0002.txt").read_text(encoding="utf-8")
    assert on_disk == "sks cat, sitting on a wooden chair\n", on_disk
    page.locator("#lora_studio_ds_editor").scroll_into_view_if_needed()
    shot(page, "ds_04_caption_saved")
    thumbs.nth(0).click()  # an image without a caption file yet
    expect_text(page, "lora_studio_ds_caption_file", "Save creates it")

    # ---- class images with the loaded model, A1111's progress bar -----------------------------
    page.locator("#lora_studio_ds_class_group > .label-wrap").first.click()
    for elem_id, value in (("lora_studio_ds_class_per_image", 1), ("lora_studio_ds_class_steps", 1),
                           ("lora_studio_ds_class_width", 64), ("lora_studio_ds_class_height", 64)):
        box = page.locator(f"#{elem_id} input[type=number]").first
        box.fill(str(value))
        box.press("Tab")
    page.locator("#lora_studio_ds_class_generate").click()
    progress = page.locator("#lora_studio_ds_right .progressDiv")
    try:
        progress.wait_for(timeout=60_000)
        page.locator("#lora_studio_ds_class_group").scroll_into_view_if_needed()
        shot(page, "ds_05_class_images_running")
        seen_progress = True
    except Exception:  # very fast: the job ended before the bar was drawn
        seen_progress = False
    made = expect_text(page, "lora_studio_ds_class_result", "done", timeout=JOB_TIMEOUT_MS)
    assert "Made 4 class image(s)" in made, made
    assert len(list((new_root / "reg" / "1_cat").glob("*.png"))) == 4
    page.locator("#lora_studio_ds_class_gallery img").first.wait_for()
    shot(page, "ds_06_class_images_done")
    print(f"class images in the tab: {made!r}; progress bar seen: {seen_progress}")

    # ---- Use in Train ------------------------------------------------------------------------
    page.locator("#lora_studio_ds_use_in_train").click()
    train_dir = text_input(page, "lora_studio_data_train_dir")
    page.wait_for_function(f"gradioApp().querySelector('#lora_studio_data_train_dir textarea, "
                           f"#lora_studio_data_train_dir input').value === {str(new_root / 'img')!r}")
    assert page.locator("#lora_studio_start").is_visible()
    assert text_input(page, "lora_studio_output_trigger_word").input_value() == "sks"
    assert text_input(page, "lora_studio_data_reg_dir").input_value() == str(new_root / "reg")
    assert text_input(page, "lora_studio_output_name").input_value() == f"{name}-64"  # was the default my_lora
    method = page.evaluate("() => { const i = gradioApp().querySelector('#lora_studio_method input:checked');"
                           " return i ? i.closest('label').innerText : ''; }")
    assert method.strip() == "DreamBooth-LoRA (class images)", method
    assert page.locator("#lora_studio_dreambooth").is_visible()
    expect_text(page, "lora_studio_dataset_summary", "4 images")
    shot(page, "ds_07_use_in_train")
    print(f"Train tab dataset folder: {train_dir.input_value()}")
    assert not page.page_errors, page.page_errors
