"""The offline CLIP tokenizer gives the ids of OpenAI's CLIP tokenizer, in every environment."""

from lib_training.models.clip_tokenizer import load_clip_tokenizer


def test_known_ids_of_clip_vit_l14():
    tokenizer = load_clip_tokenizer()
    # The ids OpenAI's tokenizer gives: <start> a photo of a cat <end>, then <end> as padding.
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert ids[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]
    assert len(ids) == 77 and len(tokenizer) == 49408


def test_different_prompts_get_different_ids():
    tokenizer = load_clip_tokenizer()
    a, b = tokenizer(["sks dog", "a watercolor landscape"]).input_ids
    assert a != b and len(set(a)) > 2 and len(set(b)) > 3
