"""Against a real A1111 (set WEBUI_DIR): the messy corpus (tests/bad_inputs.py) trains in the WebUI, and
the Train tab shows the one list of files it left out.

Skipped unless these are there (the browser part also needs Chromium and Playwright):
  WEBUI_DIR=/path/to/stable-diffusion-webui   prepared as in README, "Testing against a real WebUI"
  /usr/bin/chromium + the `playwright` package (browser test only; see tests/test_webui_browser.py)

    OMP_NUM_THREADS=1 WEBUI_DIR=/work/webui .venv-tests/a1111/bin/python -m pytest tests/test_webui_preflight_live.py -s

A screenshot of the tab's result with the list goes to tests/artifacts/browser/preflight_left_out.png.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

WEBUI_DIR = os.environ.get("WEBUI_DIR")
HOW = ("set WEBUI_DIR=/path/to/stable-diffusion-webui (prepared as in README, 'Testing against a real WebUI'); "
       "the browser test also needs /usr/bin/chromium and the playwright package")
pytestmark = pytest.mark.skipif(not WEBUI_DIR, reason="needs a real A1111 (WEBUI_DIR unset); " + HOW)

from bad_inputs import build_corpus  # noqa: E402
from webui_server import ARTIFACTS, running_webui  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
TRAIN_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def webui():
    with running_webui("webui_preflight_live.log") as server:
        yield server


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("messy_live"))


@pytest.fixture
def lora_name():
    name = "ls_preflight_" + uuid.uuid4().hex[:8]
    yield name
    lora_dir = Path(WEBUI_DIR) / "models" / "Lora"
    for path in lora_dir.glob(name + "*"):
        if path.is_file():
            path.unlink()
    shutil.rmtree(Path(WEBUI_DIR) / "lora_studio" / "runs" / name, ignore_errors=True)


def settings(corpus, name: str) -> dict:
    return {"data": {"train_dir": str(corpus.project), "resolution": 64, "bucketing": False},
            "network": {"rank": 4, "alpha": 4}, "train": {"max_steps": 2, "save_every_epochs": 0, "seed": 3},
            "output": {"name": name, "trigger_word": "sks"}}


def test_the_api_trains_on_the_good_files_and_lists_the_rest(webui, corpus, lora_name):
    started = webui.post("/lora-studio/v1/start", settings(corpus, lora_name))
    assert started["status"]["state"] == "running"
    deadline = time.time() + TRAIN_TIMEOUT_S
    status = started["status"]
    while status["state"] == "running" and time.time() < deadline:
        time.sleep(1)
        status = webui.get("/lora-studio/v1/status")
    assert status["state"] == "finished", status["error"]
    assert {Path(item["path"]) for item in status["left_out"]} == corpus.expected_left_out
    assert any(m.startswith("Pre-flight: training on") for m in status["messages"])


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"needs {CHROMIUM}; " + HOW)
def test_the_train_tab_shows_the_left_out_list(webui, corpus, lora_name):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package; " + HOW)
    from test_webui_browser import CHROMIUM_ARGS, main_tab, markdown, open_accordion, set_number, text_input

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(120_000)
            page.goto(webui.url, wait_until="domcontentloaded", timeout=120_000)
            page.locator("#tabs > .tab-nav button").first.wait_for(timeout=120_000)
            main_tab(page, "LoRA Studio")
            page.locator("#lora_studio_tabs .tab-nav button").filter(has_text="Train").first.click()
            box = text_input(page, "lora_studio_data_train_dir")
            box.fill(str(corpus.project))
            box.press("Tab")
            text_input(page, "lora_studio_output_name").fill(lora_name)
            open_accordion(page, "lora_studio_group_schedule")
            set_number(page, "lora_studio_train_max_steps", 2)
            set_number(page, "lora_studio_train_save_every_epochs", 0)
            open_accordion(page, "lora_studio_group_data")
            set_number(page, "lora_studio_data_resolution", 64)
            page.locator("#lora_studio_start").click()
            left_out = markdown(page, "lora_studio_result").locator(".lora-studio-left-out")
            left_out.wait_for(timeout=TRAIN_TIMEOUT_S * 1000)
            (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
            left_out.screenshot(path=str(ARTIFACTS / "browser" / "preflight_left_out.png"))
            text = left_out.inner_text()
            assert f"Left out {len(corpus.expected_left_out)} file(s)" in text
            assert all(str(path) in text for path in corpus.expected_left_out)
        finally:
            browser.close()
