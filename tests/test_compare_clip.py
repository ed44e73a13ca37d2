"""The metric path end to end with a tiny random CLIP built offline: grid -> cache -> CLIP
embeddings -> metrics -> recommendation, and "dataset vs generated"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from PIL import Image, ImageDraw

from lib_training.compare import (
    GridSpec,
    LoraFile,
    PairSpec,
    TransformersClipEmbedder,
    alignment_text,
    compute_metrics,
    dataset_vs_generated,
    load_embedder,
    recommend,
    run_grid,
)
from lib_training.errors import CheckpointError, DatasetError

SIZE = 32


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from lib_training.models.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=SIZE, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config)
    processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    return model, processor, load_clip_tokenizer()


@pytest.fixture(scope="module")
def embedder(tiny_clip):
    model, processor, tokenizer = tiny_clip
    return TransformersClipEmbedder(model, processor, tokenizer, batch_size=3)


def picture(seed: int, size: int = 48) -> Image.Image:
    """A distinct structured image per seed (shapes on a coloured ground)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
        draw.ellipse((x0, y0, x0 + 12, y0 + 12), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def write_lora(path: Path, value: float) -> LoraFile:
    safetensors.numpy.save_file({"w": np.full(4, value, np.float32)}, str(path))
    return LoraFile(path)


def test_embedder_shapes_and_batching(embedder):
    images = [picture(i) for i in range(5)]
    together = embedder.embed_images(images)
    assert together.shape == (5, 16) and together.dtype == np.float32
    one_by_one = np.concatenate([embedder.embed_images([img]) for img in images])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0], together[1])
    texts = embedder.embed_texts(["a photo of a dog", "a photo of a cat", "a photo of a dog"])
    assert texts.shape == (3, 16)
    np.testing.assert_allclose(texts[0], texts[2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(texts[0], texts[1])


class SubjectGenerator:
    """Weight 1: the training image itself for the instance prompt (the LoRA learned it perfectly) and a
    changed class image; weight 0.5: other pictures, and the class image unchanged."""

    def __init__(self, training: Image.Image):
        self.training = training

    def generate(self, cell):
        size = (cell.width, cell.height)
        if cell.user_prompt.startswith("photo of a"):  # the class prompt
            changed = cell.lora is not None and cell.weight == 1.0
            return picture(100 + cell.seed + (50 if changed else 0)).resize(size)
        if cell.lora is not None and cell.weight == 1.0:
            return self.training.resize(size)
        return picture(200 + cell.seed).resize(size)


def test_metrics_end_to_end_with_tiny_clip(tmp_path, embedder):
    training = picture(7, SIZE)
    training_path = tmp_path / "train" / "img.png"
    training_path.parent.mkdir()
    training.save(training_path)
    lora = write_lora(tmp_path / "subj.safetensors", 1.0)
    spec = GridSpec(files=(lora,), weights=(0.5, 1.0), prompts=("photo of sks dog, <lora:other:0.2>",),
                    seeds=(1, 2), base_model_hash="tiny", width=SIZE, height=SIZE, class_prompt="photo of a dog",
                    trigger_words=("sks",))
    result = run_grid(spec, SubjectGenerator(training), tmp_path / "cache")
    report = compute_metrics(result, embedder, [training_path])
    by_weight = {gm.weight: gm for gm in report.groups}
    # a generated image identical to the only training image has fidelity 1
    assert by_weight[1.0].fidelity == pytest.approx(1.0, abs=1e-5)
    assert by_weight[0.5].fidelity < 0.999
    # class image unchanged at 0.5: no drift; changed at 1.0: some
    assert by_weight[0.5].drift == pytest.approx(0.0, abs=1e-5)
    assert by_weight[1.0].drift > 1e-3
    # identical instance images across seeds at weight 1; class images differ by seed
    instance = [m for m in report.cells if m.cell.request.weight == 1.0 and "sks" in m.cell.request.user_prompt]
    assert len(instance) == 2 and instance[0].fidelity == pytest.approx(instance[1].fidelity, abs=1e-6)
    # CLIP score recomputed here from the embedder: 100 x max(cos, 0) with the trigger-free prompt
    text = alignment_text(spec.prompts[0], spec.trigger_words)
    assert text == "photo of dog"
    image_emb = embedder.embed_images([training])[0]
    text_emb = embedder.embed_texts([text])[0]
    cos = float(image_emb @ text_emb / np.linalg.norm(image_emb) / np.linalg.norm(text_emb))
    assert instance[0].alignment == pytest.approx(100 * max(cos, 0.0), abs=1e-3)
    best = recommend(report)
    assert best.choice.weight in (0.5, 1.0) and best.reason


def test_dataset_vs_generated(tmp_path, embedder):
    folder = tmp_path / "dataset"
    folder.mkdir()
    items = []
    for i, caption in enumerate(["sks dog, sitting", "sks dog, running"]):
        path = folder / f"{i}.png"
        picture(20 + i, 40).save(path)
        items.append((path, caption))
    lora = write_lora(tmp_path / "subj.safetensors", 1.0)

    class CaptionGenerator:
        calls = 0

        def generate(self, cell):
            CaptionGenerator.calls += 1
            assert cell.seed == 9 and cell.prompt.endswith("<lora:subj:0.8>")
            if cell.user_prompt == "sks dog, sitting":  # reproduces its training image exactly
                return Image.open(items[0][0]).convert("RGB")
            return picture(99, 40)

    spec = PairSpec(lora=lora, weight=0.8, base_model_hash="tiny", seed=9, width=40, height=40)
    result = dataset_vs_generated(items, spec, CaptionGenerator(), embedder, tmp_path / "cache", thumb=40, columns=2)
    assert [p.caption for p in result.pairs] == ["sks dog, sitting", "sks dog, running"]
    assert result.pairs[0].fidelity == pytest.approx(1.0, abs=1e-5)
    assert result.pairs[1].fidelity < 0.999
    assert result.mean_fidelity == pytest.approx((result.pairs[0].fidelity + result.pairs[1].fidelity) / 2)
    # side by side: training image left, generated right, in the first pair's box
    image = np.asarray(result.image).astype(int)
    left = image[4:44, 8:48]
    right = image[4:44, 52:92]
    assert np.abs(left - np.asarray(Image.open(items[0][0]).convert("RGB"))).max() == 0
    assert np.abs(right - left).max() == 0
    assert result.image.width >= 2 * (2 * 40)
    again = dataset_vs_generated(items, spec, CaptionGenerator(), embedder, tmp_path / "cache", thumb=40)
    assert CaptionGenerator.calls == 2 and again.pairs[1].fidelity == pytest.approx(result.pairs[1].fidelity)
    with pytest.raises(DatasetError):
        dataset_vs_generated([], spec, CaptionGenerator(), embedder, tmp_path / "cache")


def test_embedder_from_a_local_folder(tmp_path, tiny_clip, embedder):
    model, processor, _ = tiny_clip
    folder = tmp_path / "clip"
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    loaded = load_embedder(str(folder))  # no tokenizer files there: CLIP's own, built offline
    images = [picture(1), picture(2)]
    np.testing.assert_allclose(loaded.embed_images(images), embedder.embed_images(images), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded.embed_texts(["a dog"]), embedder.embed_texts(["a dog"]), rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match="Could not load the CLIP model"):
        load_embedder(str(tmp_path / "missing"))


def test_open_clip_spec_is_checked_before_loading(tmp_path):
    with pytest.raises(CheckpointError, match="open_clip:<name>"):
        load_embedder("open_clip:ViT-B-32")
    with pytest.raises(CheckpointError, match="not a .safetensors"):
        load_embedder(f"open_clip:ViT-B-32:{tmp_path / 'weights.bin'}")


def test_open_clip_embedder_with_a_tiny_model():
    open_clip = pytest.importorskip("open_clip", exc_type=ImportError)
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from open_clip.transform import image_transform

    from lib_training.compare import OpenClipEmbedder

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=SIZE)
    model = CLIP(embed_dim=16, vision_cfg=vision,
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    embedder = OpenClipEmbedder(model, image_transform(SIZE, is_train=False), open_clip.tokenize, batch_size=2)
    images = embedder.embed_images([picture(1), picture(2), picture(1)])
    assert images.shape == (3, 16)
    np.testing.assert_allclose(images[0], images[2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(images[0], images[1])
    texts = embedder.embed_texts(["a dog", "a cat"])
    assert texts.shape == (2, 16) and not np.allclose(texts[0], texts[1])
