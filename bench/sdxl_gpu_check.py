"""GPU check of SDXL at real size: random real-architecture checkpoint -> our loader -> kohya names
-> train 24 steps at 1024 px (fp16, checkpointing, UNet only) -> the file loads in diffusers' SDXL pipeline
and predicts as our hooked model. Needs a CUDA GPU (~20 GB), diffusers + peft, ~30 GB RAM, 7 GB in /tmp.

    OUT=/tmp/xl PYTHONUNBUFFERED=1 python bench/sdxl_gpu_check.py     # results in $OUT/xl.json
"""
import json, os, sys, time
from pathlib import Path
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
OUT = Path(os.environ.get("OUT", "/tmp/sdxl_gpu_check")); OUT.mkdir(parents=True, exist_ok=True); res = {}
def log(**kw):
    res.update(kw); print(kw, flush=True); (OUT / "xl.json").write_text(json.dumps(res, indent=1, default=str))
from tools.random_checkpoint import make_random_checkpoint
ckpt = Path("/tmp/random-sdxl.safetensors")
t = time.time(); make_random_checkpoint(ckpt, "sdxl", seed=0, half=True)
log(make_checkpoint_s=round(time.time() - t, 1), checkpoint_gb=round(ckpt.stat().st_size / 1e9, 2))
from lib_training.models.single_file import load_checkpoint
t = time.time(); model = load_checkpoint(ckpt, device="cuda", dtype=torch.float16)
log(load_s=round(time.time() - t, 1), family=model.info.family, prediction=model.info.prediction_type)
from lib_training.lora.network import NetworkShape, select_targets
pinned = json.loads(Path("tests/data/sdxl_kohya_lora_names.json").read_text())
targets = select_targets(model, NetworkShape(16, 8))
unet = {t.kohya_name for t in targets if t.kohya_name.startswith("lora_unet")}
te = {t.kohya_name for t in targets if t.kohya_name.startswith("lora_te")}
log(unet_targets=len(unet), te_targets=len(te), names_equal_pinned=unet == set(pinned["unet_default"]) and te == set(pinned["text_encoders"]))
from conftest import write_photos, small_config
ds = Path("/tmp/ds"); write_photos(ds / "2_sks cat", names=("chelsea", "astronaut", "coffee", "rocket"), size=1400,
                                   captions={"chelsea": "sks cat, sitting"})
from lib_training.train.loop import train
from lib_training.train import events as ev
steps = []
def on(e):
    if isinstance(e, ev.StepDone): steps.append((e.step, e.elapsed_s, e.loss))
cfg = small_config(ds, OUT / "lora", train__max_steps=24, optimizer__unet_lr=1e-4, network__rank=16, network__alpha=8.0,
                   network__train_text_encoder=False, train__gradient_checkpointing=True, train__mixed_precision="fp16",
                   data__resolution=1024, data__bucketing=True, output__save_dtype="fp16", train__loss_readback_steps=1)
torch.cuda.reset_peak_memory_stats()
t = time.time(); result = train(cfg, model, on_event=on)
per = [(b[1] - a[1]) for a, b in zip(steps[3:], steps[4:])]
log(train_s=round(time.time() - t, 1), steady_s_per_step=round(sorted(per)[len(per) // 2], 4),
    peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2), losses=[round(s[2], 4) for s in steps],
    lora_mb=round(result.path.stat().st_size / 1e6, 1))
from lib_training.lora.io import load_lora
tensors, meta = load_lora(result.path)
log(meta={k: meta[k] for k in ("ss_base_model_version", "modelspec.architecture", "modelspec.resolution", "ss_bucket_info")})
# diffusers' own SDXL pipeline loads the file onto the real architecture
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from lib_training.lora.network import LoraNetwork
import copy
tok2 = copy.deepcopy(model.tokenizer); tok2.pad_token = "!"
pipe = StableDiffusionXLPipeline(vae=model.vae(), text_encoder=model.clip_l, text_encoder_2=model.big_g, tokenizer=model.tokenizer,
                                 tokenizer_2=tok2, unet=model.unet(), scheduler=EulerDiscreteScheduler())
network = LoraNetwork.for_model(model, NetworkShape(16, 8, text_encoder=False)); network.load_kohya_state_dict(tensors)
with torch.no_grad():
    g = torch.Generator("cuda").manual_seed(0)
    lat = torch.randn(1, 4, 64, 64, device="cuda", generator=g, dtype=torch.float16); ts = torch.tensor([500], device="cuda")
    cond = model.encode_prompts(["sks cat"])
    base = model.predict(lat, ts, cond)
    with network.attached():
        ours = model.predict(lat, ts, cond)
    pipe.load_lora_weights(str(result.path.parent), weight_name=result.path.name)
    theirs = model.predict(lat, ts, cond)
log(lora_effect=float((ours - base).abs().max()), ours_vs_diffusers_max_abs=float((ours - theirs).abs().max()),
    diffusers_lora_layers=sum(1 for n, _ in model.unet().named_modules() if n.endswith(".lora_A")))
