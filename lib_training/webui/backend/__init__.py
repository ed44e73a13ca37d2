"""What reads and guards A1111's loaded model, and runs training on it.

`ldm_adapter`/`ldm_names` (the engine's ModelAdapter over ldm), `bridge` (the sacred-model guard and
the run), `service` (one run at a time, status), `runtime` (A1111 wiring: queue, folders, options),
`outputs` (the card files beside a LoRA). Nothing here imports a tab package.
"""
