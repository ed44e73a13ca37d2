"""CLIP embedders for the metrics: transformers' CLIPModel or open_clip, imported only when used.

`load_embedder("openai/clip-vit-large-patch14")` (a model id or a local folder) uses transformers
and reads safetensors weights only; `load_embedder("open_clip:ViT-B-32:laion2b_s34b_b79k")` uses
open_clip with a pretrained tag or a local `.safetensors` file. A folder without a tokenizer
gets CLIP's standard one, built offline (`models/clip_tokenizer.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import CheckpointError

OPEN_CLIP_PREFIX = "open_clip:"


class TransformersClipEmbedder:
    """Embeddings from a transformers `CLIPModel` (projected features, the space CLIP scores use)."""

    def __init__(self, model, image_processor, tokenizer, device: str = "cpu", batch_size: int = 16) -> None:
        import torch

        self.torch = torch
        self.model = model.eval().requires_grad_(False)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model.to(self.device)
        self.max_length = int(getattr(model.config.text_config, "max_position_embeddings", 77))

    @classmethod
    def from_pretrained(cls, model: str, device: str = "cpu",
                        local_files_only: bool = False) -> TransformersClipEmbedder:
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        try:
            clip = CLIPModel.from_pretrained(model, use_safetensors=True, local_files_only=local_files_only)
            processor = CLIPImageProcessor.from_pretrained(model, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"Could not load the CLIP model {model!r} ({error}). Give a folder with config.json, "
                "model.safetensors and preprocessor_config.json, or a model id that can be downloaded."
            ) from error
        try:
            tokenizer = CLIPTokenizer.from_pretrained(model, local_files_only=local_files_only)
        except (OSError, ValueError):
            tokenizer = None
        if tokenizer is None or len(tokenizer) < 1000:  # transformers 5 gives a 3-token stub without files
            from ..models.clip_tokenizer import load_clip_tokenizer

            tokenizer = load_clip_tokenizer()
        return cls(clip, processor, tokenizer, device)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [img.convert("RGB") for img in images[start:start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            dtype = next(self.model.parameters()).dtype
            with self.torch.no_grad():
                features = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
            out.append(_features(features))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]), padding="max_length",
                                    truncation=True, max_length=self.max_length, return_tensors="pt")
            with self.torch.no_grad():
                features = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                        attention_mask=tokens["attention_mask"].to(self.device))
            out.append(_features(features))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)


class OpenClipEmbedder:
    """Embeddings from an open_clip model (`encode_image` / `encode_text`)."""

    def __init__(self, model, preprocess, tokenizer, device: str = "cpu", batch_size: int = 16) -> None:
        import torch

        self.torch = torch
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model.to(self.device)

    @classmethod
    def from_pretrained(cls, name: str, pretrained: str, device: str = "cpu") -> OpenClipEmbedder:
        local = Path(pretrained)
        if local.suffix and local.suffix.lower() != ".safetensors":
            raise CheckpointError(f"{local.name} is not a .safetensors file. Only safetensors weights are loaded "
                                  "from files (others can run code); use a pretrained tag or convert the file.")
        try:
            import open_clip
        except ImportError as error:
            raise CheckpointError(f"open_clip cannot be imported ({error}). Install open-clip-torch, or use a "
                                  "transformers CLIP model id instead.") from error
        try:
            if local.suffix:
                import safetensors.torch

                if not local.is_file():
                    raise CheckpointError(f"CLIP weights {local} do not exist.")
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
                model.load_state_dict(safetensors.torch.load_file(str(local)))
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        except (RuntimeError, OSError, ValueError) as error:
            raise CheckpointError(f"Could not load open_clip model {name} with {pretrained!r} ({error}). "
                                  "Check the model name and the pretrained tag or file.") from error
        return cls(model, preprocess, open_clip.get_tokenizer(name), device)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [self.preprocess(img.convert("RGB")) for img in images[start:start + self.batch_size]]
            batch = self.torch.stack(batch)
            with self.torch.no_grad():
                out.append(_features(self.model.encode_image(batch.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]))
            with self.torch.no_grad():
                out.append(_features(self.model.encode_text(tokens.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def load_embedder(model: str, device: str = "cpu"):
    """A transformers CLIP (model id or folder), or open_clip as `open_clip:<name>:<tag or .safetensors>`."""
    if model.startswith(OPEN_CLIP_PREFIX):
        name, _, pretrained = model[len(OPEN_CLIP_PREFIX):].partition(":")
        if not name or not pretrained:
            raise CheckpointError(f"{model!r}: write open_clip models as open_clip:<name>:<pretrained tag or "
                                  "file>, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k.")
        return OpenClipEmbedder.from_pretrained(name, pretrained, device)
    return TransformersClipEmbedder.from_pretrained(model, device)


def _features(output) -> np.ndarray:
    """Projected features as float32 numpy; transformers >= 5 wraps them in a model output."""
    tensor = output if hasattr(output, "detach") else output.pooler_output
    return tensor.detach().float().cpu().numpy()
