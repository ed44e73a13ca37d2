"""Peak memory of a full fine-tune step against a LoRA step on the same model, on the CPU.

    .venv-tests/a1111/bin/python bench/full_memory.py [--steps 3] [--resolution 128]

Each method runs in its own child process on a random-weight model with SD1.5's UNet layout at
a quarter of its width (block channels 80/160/320/320, 768-wide cross-attention; ~56 M UNet
weights against SD1.5's 860 M), UNet only, AdamW, batch 1. Memory is the process's resident
set, sampled every 2 ms while `train()` runs, minus what it held just before (model + dataset
loaded): what the training itself adds. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def small_sd15_configs() -> dict:
    from lib_training.models.tiny import tiny_text_config, tiny_vae_config

    unet = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(80, 160, 320, 320),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=16)
    text = {**tiny_text_config(), "hidden_size": 768, "intermediate_size": 1024, "num_attention_heads": 8}
    return {"unet": unet, "vae": tiny_vae_config(), "text": text}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(method: str, steps: int, resolution: int) -> dict:
    from conftest import small_config, write_photos
    from lib_training.models.adapter import ModelInfo
    from lib_training.models.clip_tokenizer import load_clip_tokenizer
    from lib_training.models.diffusers_backend import DiffusersAdapter
    from lib_training.models.tiny import build_models
    from lib_training.train.loop import train

    configs = small_sd15_configs()
    unet, vae, text = build_models(configs["unet"], configs["vae"], configs["text"], seed=0)
    model = DiffusersAdapter(unet, vae, text, load_clip_tokenizer(), ModelInfo("sd1", "epsilon", "small-sd15"))
    work = Path(tempfile.mkdtemp(prefix="full_memory_"))
    write_photos(work / "data" / "2_sks cat", size=resolution)
    config = small_config(work / "data", work / "out", network__method=method, network__rank=32,
                          network__alpha=16.0, optimizer__text_encoder_lr=0.0, optimizer__unet_lr=1e-4,
                          train__max_steps=steps, train__save_every_epochs=0, data__resolution=resolution)
    config.output.save_dtype = "fp16"
    before, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = train(config, model)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    unet_params = sum(p.numel() for p in unet.parameters())
    return {"method": method, "unet_params_m": round(unet_params / 1e6, 1),
            "model_loaded_mb": round(before / 2**20), "peak_added_mb": round((peak[0] - before) / 2**20),
            "seconds_per_step": round(seconds / steps, 2), "file_mb": round(result.path.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.resolution)))
        return
    rows = []
    for method in ("lora", "full"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--steps", str(args.steps),
                              "--resolution", str(args.resolution)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    lora, full = rows
    print(f"full / LoRA peak added memory: {full['peak_added_mb'] / max(lora['peak_added_mb'], 1):.1f}x "
          f"({full['peak_added_mb']} vs {lora['peak_added_mb']} MB; UNet {full['unet_params_m']} M weights)")


if __name__ == "__main__":
    main()
