"""The pixel-space base model: a small diffusers UNet + a tiny CLIP text encoder, trained jointly.

`QualityAdapter` fits lib_training's ModelAdapter protocol, so the engine's `train()` trains
LoRAs on it unchanged. Its "VAE" is a fixed 2x box downsample: the engine needs a training
resolution of at least 64, so dataset images are 64x64 (the 32x32 world upscaled 2x nearest)
and `encode_images` turns them back into exactly the 32x32 world pixels in [-1, 1]
(`decode_latents` is the inverse, a 2x nearest upsample).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib_training.demo import world
from lib_training.models.adapter import EPSILON, ModelInfo
from lib_training.models.diffusers_backend import DiffusersAdapter

BASE_FILE = "base.safetensors"
LATENT_DOWNSCALE = 2
NUM_TIMESTEPS = 1000
# Classifier-free guidance of every sample the benchmark draws: A1111's default CFG scale. The base model
# reads 0.91 of the seen prompts right at CFG 3, 0.96 at 5, 0.97 at 7 (96 samples each).
CFG = 7.0

# ---- word-level tokenizer ---------------------------------------------------------------------
SPECIAL = ("<pad>", "<bos>", "<eos>", "<unk>")
WORDS = ("a", "an", "on", "background", "shape", "photo", "of", "sks", "ohwx", "zwx") + world.SHAPES + \
    world.COLOURS + world.BACKGROUNDS
VOCAB = SPECIAL + WORDS
MAX_TOKENS = 12  # <bos> + up to 10 words + <eos>


class WordTokenizer:
    """Lower-cased whitespace words -> ids; unknown words -> <unk>; padded with <pad> to MAX_TOKENS."""

    def __init__(self, vocab: Sequence[str] = VOCAB, max_tokens: int = MAX_TOKENS):
        self.vocab = tuple(vocab)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.max_tokens = max_tokens

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            words = [self.ids.get(w, self.ids["<unk>"]) for w in prompt.lower().replace(",", " ").split()]
            ids = [self.ids["<bos>"]] + words[: self.max_tokens - 2] + [self.ids["<eos>"]]
            rows.append(ids + [self.ids["<pad>"]] * (self.max_tokens - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


# ---- architecture ------------------------------------------------------------------------------
def unet_config() -> dict:
    return dict(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(24, 48, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
    )


def text_config() -> dict:
    return dict(
        vocab_size=len(VOCAB), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=64,
        hidden_act="quick_gelu", pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def build_modules(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**unet_config()), CLIPTextModel(CLIPTextConfig(**text_config()))


def cosine_alphas_cumprod(steps: int = NUM_TIMESTEPS, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The 'squaredcos_cap_v2' DDPM schedule (Nichol & Dhariwal), as float32."""
    def f(t: float) -> float:
        return np.cos((t / steps + s) / (1 + s) * np.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(steps)]
    return torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float64), 0).float()


# ---- the adapter -------------------------------------------------------------------------------
class QualityAdapter(DiffusersAdapter):
    """The engine's diffusers adapter over the pixel-space model: word tokenizer, cosine schedule, box "VAE"."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, info: ModelInfo | None = None):
        info = info or ModelInfo(family="sd1", prediction_type=EPSILON, name="quality-base")
        super().__init__(unet.eval(), nn.Identity(), text_encoder.eval(), WordTokenizer(), info, vae_scaling_factor=1.0)
        self._alphas_cumprod = cosine_alphas_cumprod().to(self.device)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(prompts).to(self.device)

    def original_layout_state_dict(self, value: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                                   ) -> dict[str, torch.Tensor]:
        """The toy has no ldm original (its "VAE" is a box filter, not a diffusers VAE): its single file is the
        fixture's layout, so a full fine-tune writes a file like base.safetensors (`model_from_tensors` reads it)."""
        return base_tensors(self, value)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(pixels.to(self.device, torch.float32), LATENT_DOWNSCALE).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return F.interpolate(latents.float(), scale_factor=LATENT_DOWNSCALE, mode="nearest").clamp(-1, 1)


def load_base(check_hash: bool = True) -> QualityAdapter:
    from lib_training.demo.fixtures_io import FIXTURES, load_fixture, sha256

    tensors, meta = load_fixture(BASE_FILE)
    info = ModelInfo(family="sd1", prediction_type=EPSILON, name=BASE_FILE, sha256=sha256(FIXTURES / BASE_FILE),
                     extra={"quality_bench": meta})
    return model_from_tensors(tensors, info)


def model_from_tensors(tensors: dict[str, torch.Tensor], info: ModelInfo | None = None) -> QualityAdapter:
    """The toy model holding `tensors` in the fixture's layout (`base_tensors`): the base fixture, or the
    checkpoint a full fine-tune of it wrote (`QualityAdapter.original_layout_state_dict`)."""
    unet, text_encoder = build_modules()
    unet.load_state_dict({k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")})
    te_state = {k[len("te."):]: v for k, v in tensors.items() if k.startswith("te.")}
    if not hasattr(text_encoder, "text_model"):  # transformers 5 dropped the `text_model` level
        te_state = {k.removeprefix("text_model."): v for k, v in te_state.items()}
    missing, unexpected = text_encoder.load_state_dict(te_state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise RuntimeError(f"tensors do not match the toy model's architecture: {missing} {unexpected}")
    for m in (unet, text_encoder):
        m.requires_grad_(False).eval()
    return QualityAdapter(unet, text_encoder, info)


# ---- sampling ----------------------------------------------------------------------------------
@torch.no_grad()
def sample(model: QualityAdapter, prompts: Sequence[str], seed: int | Sequence[int], steps: int = 20, cfg: float = CFG,
           batch: int = 128) -> torch.Tensor:
    """DDIM (eta 0) with classifier-free guidance; returns (N, 3, 32, 32) in [-1, 1].

    `seed`: one seed for all images (image i's noise depends only on (seed, i), so the same seed compares
    models pixel by pixel), or one seed per image (as A1111's seeds: the class-image generator uses them).
    """
    shape = (3, world.SIZE, world.SIZE)
    if isinstance(seed, int):
        noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed))
    else:
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seed])
    alphas = model.alphas_cumprod.cpu()
    ts = np.linspace(NUM_TIMESTEPS - 1, 0, steps).round().astype(int)
    uncond = model.encode_prompts([""])
    out = []
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i:i + batch])
        cond = model.encode_prompts(chunk)
        x = noise[i:i + batch].to(model.device)
        both = torch.cat([uncond.expand(len(chunk), -1, -1), cond])
        for k, t in enumerate(ts):
            a_t = alphas[t]
            a_prev = alphas[ts[k + 1]] if k + 1 < len(ts) else torch.tensor(1.0)
            tt = torch.full((2 * len(chunk),), int(t), device=model.device)
            e_u, e_c = model.predict(torch.cat([x, x]), tt, both).float().chunk(2)
            eps = e_u + cfg * (e_c - e_u)
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


# ---- pre-training ------------------------------------------------------------------------------
@dataclass
class BaseTrainSettings:
    seed: int = 0
    steps: int = 5000
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    save_every: int = 300  # hands a snapshot of the EMA model to `on_snapshot` this often
    stop_after: int = 0  # > 0: stop after this many steps (the schedule still spans `steps`)


def train_base(s: BaseTrainSettings, log=print, on_snapshot=None) -> tuple[QualityAdapter, float, int]:
    """Trains UNet + text encoder jointly on seen shapes; returns (EMA model, seconds, steps)."""
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    unet, te = build_modules(s.seed)
    unet.train()
    te.train()
    ema = [copy.deepcopy(unet).eval().requires_grad_(False), copy.deepcopy(te).eval().requires_grad_(False)]
    tokenizer = WordTokenizer()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / s.warmup) * 0.5 * (1 + np.cos(np.pi * min(i, s.steps) / s.steps)))
    alphas = cosine_alphas_cumprod()
    started = time.monotonic()
    for step in range(s.stop_after or s.steps):
        images, captions, _ = world.sample_batch(rng, s.batch)
        captions = ["" if rng.random() < s.caption_dropout else c for c in captions]
        x0 = torch.from_numpy(world.to_unit(images))
        t = torch.randint(0, NUM_TIMESTEPS, (s.batch,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = te(tokenizer(captions)).last_hidden_state
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for live, avg in zip((unet, te), ema):
                for p, q in zip(live.parameters(), avg.parameters()):
                    q.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == s.steps - 1:
            el = time.monotonic() - started
            log(f"base step {step}/{s.steps} loss {loss.item():.4f} {el:.0f}s")
        if on_snapshot is not None and (step + 1) % s.save_every == 0 and step + 1 < s.steps:
            on_snapshot(QualityAdapter(ema[0], ema[1]), step + 1, time.monotonic() - started)
    return QualityAdapter(ema[0], ema[1]), time.monotonic() - started, s.stop_after or s.steps


def base_tensors(model: QualityAdapter, value: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                 ) -> dict[str, torch.Tensor]:
    """The model's weights in the fixture's layout; `value` maps each weight to what is written (the
    full fine-tune's trained value, looked up by the parameter itself)."""
    out = {f"unet.{k}": value(v).detach() for k, v in model.unet().state_dict(keep_vars=True).items()}
    te = model.text_encoder()
    level = "" if hasattr(te, "text_model") else "text_model."  # the fixture keeps transformers 4's names
    out.update({f"te.{level}{k}": value(v).detach() for k, v in te.state_dict(keep_vars=True).items()
                if not k.endswith("position_ids")})
    return out
