"""LoRA Studio's training engine.

Imports nothing from gradio or the WebUI: the same code trains from the WebUI tab,
the CLI (`python -m lib_training`) and the tests.
"""

__version__ = "0.1.0"
