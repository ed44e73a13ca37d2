"""The WebUI side: everything that knows A1111. One folder per job:

- `backend/`  A1111's loaded model as an engine backend (ldm adapter, names), the sacred-model
              bridge, the training service and its A1111 wiring (`runtime`), what a run writes
              beside the LoRA (`outputs`). Imports no tab.
- `train/`, `dataset/`, `compare/`  one package per sub-tab: its gradio layout (`ui.py`), its
              gradio-free actions (`actions.py`) and their helpers.
- here: what all of them share — the HTTP routes (`api`), the tab assembly (`ui_tab`),
  Settings → LoRA Studio (`settings`), A1111 progress for jobs (`job_progress`).

`backend.ldm_adapter` needs only the `ldm` package (tests build tiny ldm models without A1111);
everything that touches A1111's `modules.*` imports them lazily, inside functions.
"""
