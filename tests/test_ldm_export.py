"""A full fine-tune's checkpoint keeps the diffusion schedule in fp32 whatever the weights' dtype.

A1111 keeps `alphas_cumprod` in fp32 for a half model and keeps buffers a loaded file lacks; a schedule
rounded to fp16 in our file changed the user's own model's images after switching to our checkpoint and
back (the live full fine-tune test).
"""

from __future__ import annotations

import safetensors.torch
import torch

from lib_training.models.ldm_export import save_ldm_checkpoint


class _Model:
    """What save_ldm_checkpoint needs: the original-layout state dict."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def original_layout_state_dict(self, value=lambda t: t) -> dict[str, torch.Tensor]:
        return {k: value(v) for k, v in self.state.items()}


def test_weights_in_the_asked_dtype_the_schedule_in_fp32(tmp_path):
    schedule = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    model = _Model({"alphas_cumprod": schedule, "betas": 1 - schedule,
                    "model.diffusion_model.out.2.weight": torch.randn(4, 8),
                    "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]})
    path = save_ldm_checkpoint(tmp_path / "tuned.safetensors", model, torch.float16, {"k": "v"})
    loaded = safetensors.torch.load_file(str(path))
    assert loaded["alphas_cumprod"].dtype == torch.float32 and torch.equal(loaded["alphas_cumprod"], schedule)
    assert loaded["betas"].dtype == torch.float32
    assert loaded["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert loaded["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
