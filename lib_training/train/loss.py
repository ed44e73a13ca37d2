"""Diffusion training objective: noising, eps / v targets, min-SNR weights, noise offset."""

from __future__ import annotations

import torch

from ..models.adapter import V_PREDICTION


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def sample_noise(latents: torch.Tensor, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise, plus a per-channel constant ('noise offset') that lets the model learn
    overall brightness."""
    noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents)
    if offset > 0:
        shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=generator.device)
        noise = noise + offset * shift.to(latents)
    return noise


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = _expand(alphas_cumprod[timesteps], latents).to(latents.dtype)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def target_for(prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
               alphas_cumprod: torch.Tensor) -> torch.Tensor:
    if prediction_type == V_PREDICTION:
        a = _expand(alphas_cumprod[timesteps], latents).to(latents.dtype)
        return a.sqrt() * noise - (1 - a).sqrt() * latents
    return noise


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023) as kohya applies it: min(snr, gamma) / snr for eps,
    / (snr + 1) for v-prediction."""
    a = alphas_cumprod[timesteps].float()
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == V_PREDICTION else clipped / snr


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((prediction.float() - target.float()) ** 2).mean(dim=tuple(range(1, prediction.dim())))
