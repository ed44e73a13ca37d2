"""The pixel-space base model: a small diffusers UNet + a tiny CLIP text encoder, trained jointly.

`QualityAdapter` fits lib_training's ModelAdapter protocol, so the engine's `train()` trains
LoRAs on it unchanged. Its "VAE" is a fixed 2x box downsample: the engine needs a training
resolution of at least 64, so dataset images are 64x64 (the 32x32 world upscaled 2x nearest)
and `encode_images` turns them back into exactly the 32x32 world pixels in [-1, 1]
(`decode_latents` is the inverse, a 2x nearest upsample).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import world
from lib_training.models.adapter import EPSILON, ModelInfo

BASE_FILE = "base.safetensors"
LATENT_DOWNSCALE = 2
NUM_TIMESTEPS = 1000

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
class QualityAdapter:
    """lib_training ModelAdapter over the pixel-space base model."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, info: ModelInfo | None = None):
        self._unet = unet.eval()
        self._text_encoder = text_encoder.eval()
        self.tokenizer = WordTokenizer()
        self.info = info or ModelInfo(family="sd1", prediction_type=EPSILON, name="quality-base")
        self._alphas_cumprod = cosine_alphas_cumprod().to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self._unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._unet.parameters()).dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    def unet(self) -> nn.Module:
        return self._unet

    def text_encoder(self) -> nn.Module:
        return self._text_encoder

    def named_unet_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return self._unet.named_modules()

    def named_text_encoder_modules(self) -> Iterator[tuple[str, nn.Module]]:
        if hasattr(self._text_encoder, "text_model"):
            return self._text_encoder.named_modules()
        return self._text_encoder.named_modules(prefix="text_model")

    def checkpoint_units(self) -> list[nn.Module]:
        units = [m for m in self._unet.modules() if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
        root = getattr(self._text_encoder, "text_model", self._text_encoder)
        return units + list(root.encoder.layers)

    def prepared_for_training(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, torch.float32)
        if LATENT_DOWNSCALE > 1:
            pixels = F.avg_pool2d(pixels, LATENT_DOWNSCALE)
        return pixels.to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return F.interpolate(latents.float(), scale_factor=LATENT_DOWNSCALE, mode="nearest").clamp(-1, 1)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts).to(self.device)
        return self._text_encoder(ids).last_hidden_state

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self._unet(noisy_latents, timesteps, encoder_hidden_states=cond).sample


def load_base(check_hash: bool = True) -> QualityAdapter:
    from fixtures_io import FIXTURES, load_fixture, sha256

    tensors, meta = load_fixture(BASE_FILE)
    unet, text_encoder = build_modules()
    unet.load_state_dict({k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")})
    te_state = {k[len("te."):]: v for k, v in tensors.items() if k.startswith("te.")}
    missing, unexpected = text_encoder.load_state_dict(te_state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("position_ids")]:
        raise RuntimeError(f"base fixture does not match the architecture: {missing} {unexpected}")
    for m in (unet, text_encoder):
        m.requires_grad_(False).eval()
    info = ModelInfo(family="sd1", prediction_type=EPSILON, name=BASE_FILE, sha256=sha256(FIXTURES / BASE_FILE),
                     extra={"quality_bench": meta})
    return QualityAdapter(unet, text_encoder, info)


# ---- sampling ----------------------------------------------------------------------------------
@torch.no_grad()
def sample(model: QualityAdapter, prompts: Sequence[str], seed: int, steps: int = 20, cfg: float = 3.0,
           batch: int = 128) -> torch.Tensor:
    """DDIM (eta 0) with classifier-free guidance; returns (N, 3, 32, 32) in [-1, 1].

    Image i's starting noise depends only on (seed, i), so the same seed compares models pixel by pixel.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), 3, world.SIZE, world.SIZE), generator=gen)
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
    steps: int = 1800
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


def base_tensors(model: QualityAdapter) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v for k, v in model.unet().state_dict().items()}
    out.update({f"te.{k}": v for k, v in model.text_encoder().state_dict().items() if not k.endswith("position_ids")})
    return out
