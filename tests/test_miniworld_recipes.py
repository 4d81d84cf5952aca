"""Smoke tests of the mini world's training recipes (a few steps on a tiny world), and what they must keep."""

import sys
from pathlib import Path

import pytest
import torch

from vlm_eval.miniworld import export
from vlm_eval.miniworld.training import mini_clip_card

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    return export.ensure(root, {"train": 8, "val": 0, "test": 0, "zeroshot": 0}, ("train",), workers=1)


@pytest.fixture(scope="module")
def trained_clip(world, tmp_path_factory) -> Path:
    import train_mini_clip

    out = tmp_path_factory.mktemp("clip")
    train_mini_clip.main(["--world", str(world), "--steps", "2", "--batch-size", "4", "--warmup", "1",
                          "--out", str(out / "clip.safetensors")])
    return out


@pytest.fixture(scope="module")
def trained_llava(world, trained_clip, tmp_path_factory) -> Path:
    import train_mini_llava

    out = tmp_path_factory.mktemp("llava") / "mini-llava"
    train_mini_llava.main(["--world", str(world), "--clip", str(trained_clip / "clip.safetensors"), "--steps", "2",
                           "--batch-size", "4", "--warmup", "1", "--out", str(out)])
    return out


def test_clip_recipe_writes_a_full_clip_the_card_loads(trained_clip):
    from vlm_eval.encoders.openclip_family import load_openclip_clip

    loaded = load_openclip_clip(mini_clip_card(trained_clip / "clip.safetensors"))
    assert loaded.model.token_embedding.num_embeddings == 72
    assert torch.isfinite(loaded.model.logit_scale)
    assert (trained_clip / "mini-clip-tokenizer.json").is_file()


def test_llava_recipe_keeps_the_vision_tower_frozen(trained_clip, trained_llava):
    from transformers import LlavaForConditionalGeneration

    from vlm_eval.encoders.convert import to_hf_vision_model
    from vlm_eval.encoders.openclip_family import load_openclip_encoder

    model = LlavaForConditionalGeneration.from_pretrained(trained_llava)
    converted = to_hf_vision_model(load_openclip_encoder(mini_clip_card(trained_clip / "clip.safetensors")).visual)
    tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], v) for k, v in converted.state_dict().items())


def test_training_loss_on_cached_features_equals_the_models_own_loss(world, trained_llava):
    """The recipe's shortcut (cached tower features) computes exactly LLaVA's loss on pixels."""
    import train_mini_llava
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from vlm_eval.data import load_image, preprocess_image
    from vlm_eval.data.images import CLIP_MEAN, CLIP_STD
    from vlm_eval.vlms.llava.adapter import LlavaAdapter

    adapter = LlavaAdapter(LlavaForConditionalGeneration.from_pretrained(trained_llava),
                           AutoTokenizer.from_pretrained(trained_llava), mode="robust")
    captions, vqa, paths = train_mini_llava.training_data(world, None)
    examples = [captions[0], vqa[1], captions[7]]
    ids, mask, labels, rows = train_mini_llava.batch_tensors(adapter, examples)
    features = train_mini_llava.vision_features(adapter.model.model.vision_tower, paths)
    with torch.no_grad():
        cached = train_mini_llava.language_model_loss(adapter.model, ids, mask, labels, features[rows])
        pixels = torch.stack([preprocess_image(load_image(paths[r], str(r)), 224) for r in rows])
        pixels = (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        direct = adapter.model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
    assert cached.item() == pytest.approx(direct.item(), rel=1e-5)


def test_shipped_llava_tokenizer_matches_the_recipes(trained_llava):
    from transformers import AutoTokenizer

    from vlm_eval.vlms.llava.prompts import llava_prompt

    shipped = AutoTokenizer.from_pretrained(Path(export.__file__).resolve().parents[2] / "assets/miniworld/mini-llava")
    fresh = AutoTokenizer.from_pretrained(trained_llava)
    prompt = llava_prompt("vqa", "what color is the circle?") + " red"
    assert shipped(prompt).input_ids == fresh(prompt).input_ids
    assert shipped.get_vocab() == fresh.get_vocab()


@pytest.fixture(scope="module")
def trained_flamingo(world, trained_clip, tmp_path_factory) -> Path:
    import train_mini_openflamingo

    out = tmp_path_factory.mktemp("flamingo") / "mini-openflamingo"
    train_mini_openflamingo.main(["--world", str(world), "--clip", str(trained_clip / "clip.safetensors"), "--steps",
                                  "2", "--batch-size", "4", "--warmup", "1", "--out", str(out)])
    return out


def test_flamingo_recipe_writes_what_the_card_loads_strictly_with_the_tower_untouched(trained_clip, trained_flamingo):
    import dataclasses

    from vlm_eval import cards
    from vlm_eval.encoders.openclip_family import load_openclip_encoder
    from vlm_eval.vlms.openflamingo.load import load_openflamingo

    card = dataclasses.replace(cards.load_card("vlms", "mini-openflamingo"), path=str(trained_flamingo))
    encoder = load_openclip_encoder(mini_clip_card(trained_clip / "clip.safetensors"))
    vlm = load_openflamingo(card, encoder, torch.float32, "cpu")  # every checkpoint key checked
    assert any(p.abs().sum() > 0 for n, p in vlm.model.named_parameters() if n.endswith("_gate"))  # trained 2 steps
    fresh = load_openclip_encoder(mini_clip_card(trained_clip / "clip.safetensors")).visual.state_dict()
    assert all(torch.equal(vlm.model.vision_encoder.state_dict()[k], v) for k, v in fresh.items())


def test_flamingo_training_on_cached_tokens_equals_the_models_own_loss(world, trained_clip, trained_flamingo):
    """The recipe's shortcut (cached patch tokens before ln_post) is exactly the model's forward on pixels."""
    import random

    import train_mini_openflamingo

    from vlm_eval.data import load_image, preprocess_clip_image

    adapter = train_mini_openflamingo.build_model(trained_clip / "clip.safetensors")
    examples, paths = train_mini_openflamingo.training_data(world, None)
    tokens = train_mini_openflamingo.vision_tokens(adapter.model.vision_encoder, paths)
    ids, labels, rows = train_mini_openflamingo.sequence(adapter, examples, random.Random(0), 0.5, images=2)
    ids = torch.tensor([ids])
    with torch.no_grad():
        with adapter.model.conditioned(adapter.model.perceiver(tokens[torch.tensor([rows])])):
            cached = adapter.model.lang_encoder(input_ids=ids).logits
        pixels = torch.stack([preprocess_clip_image(load_image(paths[r], str(r)), 224) for r in rows])
        direct = adapter.model(adapter.normalize(pixels[None]), input_ids=ids).logits  # both images, in order
    assert torch.allclose(cached, direct, atol=1e-4)
    assert sum(label != -100 for label in labels) > 2  # two answers and their <|endofchunk|> carry the loss
