"""Pure parts of the loop: targets, min-SNR, noise offset, schedules, Lion, epoch order."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lib_training.data.dataset import Sample, epoch_batches
from lib_training.data.folders import ImageItem
from lib_training.models.schedule import scaled_linear_alphas_cumprod
from lib_training.train.loss import add_noise, min_snr_weights, sample_noise, target_for
from lib_training.train.optim import Lion
from lib_training.train.schedule import lr_factor

ALPHAS = scaled_linear_alphas_cumprod()


def test_schedule_matches_sd_training_schedule():
    assert ALPHAS.shape == (1000,)
    assert ALPHAS[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert ALPHAS[-1].item() == pytest.approx(0.0047, abs=2e-4)  # SD's known final alpha-bar


def test_eps_and_v_targets():
    x, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(target_for("epsilon", x, noise, t, ALPHAS), noise)
    v = target_for("v_prediction", x, noise, t, ALPHAS)
    a = ALPHAS[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(v, a.sqrt() * noise - (1 - a).sqrt() * x)
    noisy = add_noise(x, noise, t, ALPHAS)
    # x0 is recovered from (noisy, v): x0 = sqrt(a) * noisy - sqrt(1 - a) * v
    assert torch.allclose(a.sqrt() * noisy - (1 - a).sqrt() * v, x, atol=1e-5)


def test_min_snr_weights():
    t = torch.tensor([1, 500, 999])
    snr = ALPHAS[t] / (1 - ALPHAS[t])
    eps = min_snr_weights(t, ALPHAS, 5.0, "epsilon")
    assert eps[0].item() == pytest.approx(5.0 / snr[0].item(), rel=1e-5)  # high SNR: down-weighted
    assert eps[2].item() == pytest.approx(1.0)  # low SNR: weight 1
    v = min_snr_weights(t, ALPHAS, 5.0, "v_prediction")
    assert v[2].item() == pytest.approx(snr[2].item() / (snr[2].item() + 1), rel=1e-5)


def test_noise_offset_shifts_whole_channels():
    latents = torch.zeros(64, 4, 8, 8)
    plain = sample_noise(latents, 0.0, torch.Generator().manual_seed(0))
    offset = sample_noise(latents, 0.5, torch.Generator().manual_seed(0))
    channel_means = lambda n: n.mean(dim=(2, 3)).std().item()  # noqa: E731
    assert channel_means(offset) > 3 * channel_means(plain)


def test_lr_schedules():
    assert [lr_factor(s, 10, 4, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5)
    assert lr_factor(5, 10, 0, "linear") == pytest.approx(0.5)
    restarts = [lr_factor(s, 100, 0, "cosine_with_restarts", restarts=2) for s in (0, 49, 50)]
    assert restarts[0] == 1.0 and restarts[1] < 0.01 and restarts[2] == pytest.approx(1.0)


def test_lion_minimises_a_quadratic():
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    optimizer = Lion([w], lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        (w ** 2).sum().backward()
        optimizer.step()
    assert w.abs().max().item() < 0.1


def _samples(buckets):
    return [Sample(ImageItem(Path(f"{i}.png"), "", repeats, False, "s"), bucket)
            for i, (bucket, repeats) in enumerate(buckets)]


def test_epoch_batches_keep_buckets_apart_count_repeats_and_are_deterministic():
    samples = _samples([((64, 64), 3), ((64, 64), 1), ((48, 80), 2), ((48, 80), 2)])
    batches = epoch_batches(samples, batch_size=2, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == [0, 0, 0, 1, 2, 2, 3, 3]
    assert all(len({samples[i].bucket for i in b}) == 1 for b in batches)
    assert batches == epoch_batches(samples, 2, 1, 0)
    assert any(epoch_batches(samples, 2, 1, e) != batches for e in range(1, 5))
    assert math.ceil(4 / 2) + math.ceil(4 / 2) == len(batches)
