"""LoRA Studio's entry point for A1111: registers the tab, its settings and its API routes.

A1111 imports every .py in scripts/ with the extension folder on sys.path, so `lib_training`
imports from here; the code lives in lib_training/webui/.
"""

from modules import script_callbacks

from lib_training.webui import api, settings, ui_tab

script_callbacks.on_ui_tabs(ui_tab.on_ui_tabs)
script_callbacks.on_ui_settings(settings.on_ui_settings)
script_callbacks.on_app_started(api.on_app_started)
