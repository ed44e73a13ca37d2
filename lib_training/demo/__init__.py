"""The built-in toy text-to-image world: a 32×32 world of coloured shapes (`world`), a small
pixel-space diffusion model pre-trained on it (`base_model`), a CNN judge that reads what an image
shows (`judge`) and their hash-checked weights (`fixtures/`, `fixtures_io`).

It is shipped with the engine so that the quality benchmark (`bench/quality`) and the coming
`lora-studio demo` can train and score LoRAs with no download. Engine code: it imports nothing
from `lib_training.webui`. The fixtures are rebuilt by `bench/quality/build_fixtures.py`.
"""
