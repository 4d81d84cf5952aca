"""Zero-shot classification: tokenizers, the whole-CLIP loader, the classifier and the CLI run.

Everything runs on a tiny open_clip CLIP (real architecture, random weights) saved in the
open_clip_full layout, a WordLevel tokenizer in the HF `tokenizers` JSON format, and ImageNet-style
class folders with a class-index JSON, all written to a temporary folder laid out as a card root.
"""

from __future__ import annotations

import hashlib
import json
import re
import logging
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import save_file

from summary_schema import check_summary
from vlm_eval import cards
from vlm_eval.cards import EncoderCard, TaskCard
from vlm_eval.cli import main
from vlm_eval.data import CLIP_MEAN, CLIP_STD, preprocess_clip_image, preprocess_image
from vlm_eval.encoders.openclip_family import load_openclip_clip
from vlm_eval.encoders.text import load_text_tokenizer
from vlm_eval.errors import CardError, CheckpointError, MissingResourceError
from vlm_eval.encoders.zeroshot import ZeroShotClassifier, class_weights, load_zeroshot_classifier
from vlm_eval.tasks.zeroshot import ZeroShot

ARCH = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 32, "width": 32, "heads": 2, "layers": 2},
}
WORDS = ["a", "photo", "of", "the", "drawing", ".", "red", "green", "blue", "square", "circle"]
PAD, UNK, START, END = 0, 1, len(WORDS) + 2, len(WORDS) + 3  # start and end: the two highest ids
# class index -> (folder, name, colour); the folder order differs from the label order on purpose
CLASSES = [("n03", "red square", (220, 30, 30)), ("n01", "green circle", (30, 200, 40)), ("n02", "blue square", (20, 40, 210))]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}."]


def write_tokenizer(path: Path, end_highest: bool = True) -> Path:
    """WordLevel tokenizer: <pad> = 0, <unk> = 1, the words, then <start_of_text> and <end_of_text>."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing

    start, end = (START, END) if end_highest else (END, START)
    vocab = {"<pad>": PAD, "<unk>": UNK, **{w: i + 2 for i, w in enumerate(WORDS)},
             "<start_of_text>": start, "<end_of_text>": end}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.post_processor = TemplateProcessing(
        single="<start_of_text> $A <end_of_text>", special_tokens=[("<start_of_text>", start), ("<end_of_text>", end)]
    )
    tokenizer.save(str(path))
    return path


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(**ARCH).eval()


def encoder_card(folder: Path, source: dict, tokenizer: str | None = "tokenizer.json", arch_config: dict = ARCH) -> EncoderCard:
    return EncoderCard(name="tiny-clip", family="openclip", arch="tiny-clip", source=source, arch_config=arch_config,
                       tokenizer=tokenizer, card_path=str(folder / "tiny-clip.yaml"))


def write_card(path: Path, fields: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(fields, sort_keys=False))


def write_class_data(root: Path) -> None:
    """Class folders of solid-colour PNGs (two sizes per class) and the class-index JSON."""
    index = {}
    for i, (folder, name, colour) in enumerate(CLASSES):
        index[str(i)] = [folder, name]
        (root / "images" / folder).mkdir(parents=True)
        for k, size in enumerate([(40, 30), (30, 44)]):
            Image.new("RGB", size, colour).save(root / "images" / folder / f"img{k}.png")
    (root / "class_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A card root: encoders/ (tiny CLIP, tokenizer, a vision-only checkpoint), tasks/, vlms/, data/."""
    root = tmp_path_factory.mktemp("zeroshot")
    model = tiny_clip()
    save_file(model.state_dict(), str(root / "tiny_clip.safetensors"))
    torch.save(model.visual.state_dict(), root / "visual_only.pt")
    (root / "encoders").mkdir()
    write_tokenizer(root / "encoders" / "tokenizer.json")
    base = {"family": "openclip", "arch": "tiny-clip", "arch_config": ARCH, "tokenizer": "tokenizer.json"}
    write_card(root / "encoders" / "tiny-clip.yaml", {**base, "source": {"path": "../tiny_clip.safetensors", "format": "open_clip_full"}})
    write_card(root / "encoders" / "robust-visual.yaml", {**base, "source": {"path": "../visual_only.pt"}})
    visual = tiny_clip(seed=5).visual  # a fine-tuned vision tower alone, paired with tiny-clip's text tower
    torch.save(visual.state_dict(), root / "paired_visual.pt")
    write_card(root / "encoders" / "robust-paired.yaml", {**base, "text_tower": "tiny-clip",
                                                           "source": {"path": "../paired_visual.pt"}})
    write_card(root / "tasks" / "tiny-zeroshot.yaml", {
        "type": "zeroshot", "reader": "imagefolder", "prompt": "none", "data_root": "../data",
        "files": {"image_dir": "images", "class_index_json": "class_index.json"}, "templates": TEMPLATES,
    })
    (root / "vlms").mkdir()
    write_class_data(root / "data")
    return root


@pytest.fixture
def home(world, monkeypatch) -> Path:
    monkeypatch.setattr(cards, "CARD_ROOT", world)
    return world


@pytest.fixture(scope="module")
def loaded(world):
    return load_openclip_clip(cards.parse_card("encoders", world / "encoders" / "tiny-clip.yaml"))


@pytest.fixture(scope="module")
def tokenize(world):
    return load_text_tokenizer(cards.parse_card("encoders", world / "encoders" / "tiny-clip.yaml"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- tokenizers ---------------------------------------------------------------------------------


def test_json_tokenizer_pads_with_zero_after_the_end_token(tokenize):
    tokens = tokenize(["a photo of a red square.", "blue"])
    assert tokens.shape == (2, 16) and tokens.dtype == torch.long
    ids = {w: i + 2 for i, w in enumerate(WORDS)}
    first = [START] + [ids[w] for w in ["a", "photo", "of", "a", "red", "square", "."]] + [END]
    assert tokens[0].tolist() == first + [PAD] * (16 - len(first))
    assert tokens[1].tolist() == [START, ids["blue"], END] + [PAD] * 13
    assert tokens.argmax(dim=-1).tolist() == [8, 2]  # where open_clip's argmax pooling reads


def test_truncation_keeps_the_end_token_last(tokenize):
    row = tokenize([" ".join(["red"] * 40)])[0]
    assert row.tolist() == [START] + [WORDS.index("red") + 2] * 14 + [END]


def test_unknown_words_are_reported_once(tokenize, caplog):
    with caplog.at_level(logging.WARNING, logger="vlm_eval.encoders.text"):
        assert tokenize(["a photo of a zebra."])[0, 5].item() == UNK
        tokenize(["a photo of an okapi."])
    assert len(caplog.records) == 1 and "zebra" in caplog.records[0].getMessage()


def test_open_clip_tokenizer_by_name_fits_the_context_length(tmp_path):
    tokenize = load_text_tokenizer(encoder_card(tmp_path, {"random": 0}, tokenizer="ViT-B-32"))
    tokens = tokenize(["a photo of a dog.", " ".join(["dog"] * 40)])
    assert tokens.shape == (2, 16)
    assert tokens[0, tokens[0].argmax()].item() == 49407 and tokens[0, -1].item() == 0  # <end_of_text>, then pad
    assert tokens[1, -1].item() == 49407  # truncated, still ends with <end_of_text>


def test_tokenizer_problems_name_the_card_and_the_fix(tmp_path):
    with pytest.raises(CardError, match=r"'tiny-clip'.*`tokenizer`"):
        load_text_tokenizer(encoder_card(tmp_path, {"random": 0}, tokenizer=None))
    with pytest.raises(MissingResourceError, match="tokenizer.json"):
        load_text_tokenizer(encoder_card(tmp_path, {"random": 0}))
    write_tokenizer(tmp_path / "swapped.json", end_highest=False)
    with pytest.raises(CardError, match="highest id"):
        load_text_tokenizer(encoder_card(tmp_path, {"random": 0}, tokenizer="swapped.json"))
    with pytest.raises(CardError, match="open_clip model"):
        load_text_tokenizer(encoder_card(tmp_path, {"random": 0}, tokenizer="no-such-model"))


# --- the whole CLIP ------------------------------------------------------------------------------


def test_full_clip_checkpoint_loads_exactly(world, loaded):
    reference = tiny_clip()
    state = loaded.model.state_dict()
    assert state.keys() == reference.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    path = world / "tiny_clip.safetensors"
    assert Path(loaded.checkpoint).resolve() == path.resolve() and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (loaded.image_size, loaded.context_length) == (224, 16)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    # the causal mask is not in the state dict: it must be rebuilt after the meta-device build
    tokens = torch.randint(2, 30, (3, 16))
    assert torch.allclose(loaded.model.encode_text(tokens), reference.encode_text(tokens), atol=1e-6)


def test_training_checkpoint_wrappers_are_undone(tmp_path):
    model = tiny_clip(seed=1)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "epoch_3.pt")
    loaded = load_openclip_clip(encoder_card(tmp_path, {"path": "epoch_3.pt"}))
    assert torch.equal(loaded.model.token_embedding.weight, model.token_embedding.weight)


@pytest.mark.parametrize("fmt", ["auto", "raw_visual"])
def test_vision_only_checkpoint_explains_that_the_text_tower_is_needed(world, fmt):
    card = encoder_card(world, {"path": str(world / "visual_only.pt"), "format": fmt})
    with pytest.raises(CheckpointError) as info:
        load_openclip_clip(card)
    message = str(info.value)
    assert "visual_only.pt" in message and "text tower" in message and "text_tower: openai" in message


def test_strict_keys_list_what_does_not_fit(tmp_path):
    state = tiny_clip().state_dict()
    del state["text_projection"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(CheckpointError, match="missing.*text_projection"):
        load_openclip_clip(encoder_card(tmp_path, {"path": "cut.safetensors"}))


def test_random_source_and_missing_text_cfg(tmp_path):
    a, b = (load_openclip_clip(encoder_card(tmp_path, {"random": 7})).model for _ in range(2))
    assert torch.equal(a.token_embedding.weight, b.token_embedding.weight)
    vision_only_arch = {k: v for k, v in ARCH.items() if k != "text_cfg"}
    with pytest.raises(CardError, match="text_cfg"):
        load_openclip_clip(encoder_card(tmp_path, {"random": 0}, arch_config=vision_only_arch))


def test_text_embedding_is_read_at_the_end_token(loaded, tokenize):
    tokens = tokenize(["a red square."])
    end = tokens[0].argmax().item()
    assert end == 5
    after = tokens.clone()
    after[0, end + 1 :] = 5  # words after the end token: invisible under the causal mask and the argmax pooling
    before = tokenize(["a red circle."])  # a different word before it changes the embedding
    model = loaded.model
    assert torch.allclose(model.encode_text(tokens), model.encode_text(after), atol=1e-6)
    assert not torch.allclose(model.encode_text(tokens), model.encode_text(before), atol=1e-4)


# --- the classifier ------------------------------------------------------------------------------


def test_class_weights_are_unit_template_means(loaded, tokenize):
    names = [name for _, name, _ in CLASSES]
    weights = class_weights(loaded.model, tokenize, names, TEMPLATES)
    assert weights.shape == (3, 32)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(3), atol=1e-6)
    for i, name in enumerate(names):
        per_template = F.normalize(loaded.model.encode_text(tokenize([t.format(name) for t in TEMPLATES])), dim=-1)
        assert torch.allclose(weights[i], F.normalize(per_template.mean(0), dim=0), atol=1e-6)


def test_classifier_normalises_pixels_inside_and_passes_gradients(loaded):
    weights = F.normalize(torch.randn(4, 32), dim=-1)
    classifier = ZeroShotClassifier(loaded.model, weights, loaded.model.logit_scale)
    pixels = torch.rand(2, 3, 224, 224, requires_grad=True)
    logits = classifier(pixels)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    image = F.normalize(loaded.model.encode_image((pixels - mean) / std), dim=-1)
    assert torch.allclose(logits, loaded.model.logit_scale.exp() * image @ weights.T, atol=1e-5)
    logits[:, 0].sum().backward()
    assert pixels.grad.abs().sum() > 0 and not any(p.requires_grad for p in classifier.parameters())
    assert classifier.image_size == 224 and classifier.n_classes == 4 and not classifier.training


def test_an_image_is_classified_as_the_class_whose_weight_it_is(loaded):
    images = torch.stack([preprocess_clip_image(Image.new("RGB", (50, 40), colour), 224) for _, _, colour in CLASSES])
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    weights = F.normalize(loaded.model.encode_image((images - mean) / std), dim=-1)
    classifier = ZeroShotClassifier(loaded.model.visual, weights.flip(0), loaded.model.logit_scale)
    assert classifier(images).argmax(dim=-1).tolist() == [2, 1, 0]


def test_load_zeroshot_classifier_for_a_card(world):
    card = cards.parse_card("encoders", world / "encoders" / "tiny-clip.yaml")
    classifier, _ = load_zeroshot_classifier(card, ["red square", "blue square"], ["a photo of a {}."])
    assert classifier.n_classes == 2 and classifier(torch.rand(1, 3, 224, 224)).shape == (1, 2)


@pytest.mark.parametrize("size", [(227, 224), (300, 227), (224, 301)])
def test_clip_preprocessing_matches_open_clip(size):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    transform = open_clip.image_transform(224, is_train=False, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert torch.allclose(preprocess_clip_image(image, 224), transform(image), atol=1e-7)
    if size == (227, 224):  # LLaVA's (transformers') crop floors the offset: one pixel to the left
        assert not torch.allclose(preprocess_image(image, 224, pad_to_square=False), transform(image))


@pytest.mark.parametrize("templates,message", [((), "no templates"), (("a photo",), "no {}"), (("a {} and a {}",), "IndexError")])
def test_bad_templates_are_card_errors(templates, message):
    card = TaskCard(name="t", type="zeroshot", reader="imagefolder", files={}, prompt="", templates=templates,
                    card_path="/cards/t.yaml")
    with pytest.raises(CardError, match=rf"/cards/t.yaml.*templates.*{message}"):
        ZeroShot(card, {})


# --- the CLI ------------------------------------------------------------------------------------

ZS = ["--encoder", "tiny-clip", "--task", "tiny-zeroshot", "--batch-size", "4"]


def test_cli_zeroshot_run_writes_the_run_folder(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ZS, "--vlm", "no-such-vlm", "--n-samples", "all", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny-clip (zero-shot classifier)" in printed and "accuracy" in printed
    assert re.search(r"^n_classes +3$", printed, re.MULTILINE)
    summary = check_summary(out)
    assert summary["n_samples"] == 6 and summary["n_skipped"] == 0
    metrics = summary["metrics"]
    assert set(metrics) == {"accuracy", "chance", "n_classes"}
    assert metrics["chance"] == pytest.approx(100 / 3) and metrics["n_classes"] == 3
    samples = read_jsonl(out / "samples.jsonl")
    assert metrics["accuracy"] == pytest.approx(sum(s["score"] for s in samples) / len(samples))
    assert [s["id"] for s in samples] == (out / "subset_ids.txt").read_text().split()
    by_id = {s["id"]: s for s in samples}
    assert by_id["n03/img0"]["label"] == "red square" and by_id["n01/img1"]["label"] == "green circle"
    for s in samples:
        assert s["score"] == (100.0 if s["prediction"] == s["label"] else 0.0)
        assert s["top5"][0] == s["prediction"] and sorted(s["top5"]) == sorted(n for _, n, _ in CLASSES)
    config = summary["config"]
    assert config["vlm"] is None and config["resolved"]["vlm_card"] is None
    assert config["resolved"]["templates"] == TEMPLATES and config["resolved"]["encoder_card"] == "tiny-clip"
    prov = summary["provenance"]
    assert prov["vlm"] is None and prov["random_weights"] is False and prov["resolution"] == 224
    assert prov["encoder"]["sha256"] == hashlib.sha256((home / "tiny_clip.safetensors").read_bytes()).hexdigest()
    assert prov["encoder"]["tokenizer_sha256"] == hashlib.sha256((home / "encoders" / "tokenizer.json").read_bytes()).hexdigest()
    assert set(prov["cards"]) == {"tiny-clip", "tiny-zeroshot"}
    assert json.loads((out / "config.json").read_text())["resolved"]["task_card"] == "tiny-zeroshot"


def test_cli_scores_100_when_class_weights_are_the_class_images(home, tmp_path, monkeypatch):
    """Class weights replaced by each class's image embedding: every label must map to its own class."""
    import vlm_eval.encoders.zeroshot as zeroshot

    def image_class_weights(model, tokenize, class_names, templates, batch_size=256):
        colour = {name: c for _, name, c in CLASSES}
        pixels = torch.stack([preprocess_clip_image(Image.new("RGB", (40, 30), colour[n]), 224) for n in class_names])
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return F.normalize(model.encode_image((pixels - mean) / std), dim=-1)

    monkeypatch.setattr(zeroshot, "class_weights", image_class_weights)
    out = tmp_path / "subset"
    assert main([*ZS, "--n-samples", "4", "--seed", "3", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 4 and summary["metrics"]["accuracy"] == 100.0
    assert len((out / "subset_ids.txt").read_text().split()) == 4


def test_cli_skips_a_corrupt_image_or_stops_with_strict(home, tmp_path, capsys):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(home / "data" / "images", images)
    (images / "n02" / "broken.png").write_bytes(b"not a png")
    args = [*ZS, "--data", f"image_dir={images}"]
    assert main([*args, "--output-dir", str(tmp_path / "lenient")]) == 0
    summary = json.loads((tmp_path / "lenient" / "summary.json").read_text())
    assert summary["n_samples"] == 6 and summary["n_skipped"] == 1
    assert read_jsonl(tmp_path / "lenient" / "skipped.jsonl")[0]["id"] == "n02/broken"
    assert main([*args, "--strict", "--output-dir", str(tmp_path / "strict")]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_cli_vision_only_encoder_is_a_user_error_before_the_run_folder(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--encoder", "robust-visual", "--task", "tiny-zeroshot", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "text tower" in err and "Traceback" not in err
    assert not out.exists()


def test_a_vision_only_release_classifies_with_the_text_tower_its_card_names(home, tmp_path):
    from vlm_eval.encoders.zeroshot import load_zeroshot_classifier

    names, templates = ["a", "b"], ["{}"]
    paired, _ = load_zeroshot_classifier(cards.load_card("encoders", "robust-paired"), names, templates)
    text, _ = load_zeroshot_classifier(cards.load_card("encoders", "tiny-clip"), names, templates)
    visual = torch.load(home / "paired_visual.pt", weights_only=True)
    assert all(torch.equal(paired.visual.state_dict()[k], v) for k, v in visual.items())
    assert not torch.equal(paired.visual.state_dict()["proj"], text.visual.state_dict()["proj"])
    assert torch.equal(paired.class_weights, text.class_weights) and paired.logit_scale == text.logit_scale
    out = tmp_path / "run"
    assert main(["--encoder", "robust-paired", "--task", "tiny-zeroshot", "--output-dir", str(out)]) == 0
    provenance = json.loads((out / "summary.json").read_text())["provenance"]["encoder"]
    assert provenance["text_tower"] == "tiny-clip" and provenance["checkpoint"].endswith("paired_visual.pt")


def test_cli_zeroshot_resolution_must_match_the_encoder(home, capsys):
    assert main([*ZS, "--resolution", "336"]) == 2
    assert "takes 224-px images, not 336" in capsys.readouterr().err


def test_default_run_folder_names_no_vlm():
    from vlm_eval.config import EvalConfig
    from vlm_eval.run.plan import run_dir_for

    assert run_dir_for(EvalConfig(encoder="mini-clip", task="mini-zeroshot"), classifier=True).name.startswith("mini-zeroshot-mini-clip-2")
    assert run_dir_for(EvalConfig(encoder="fare4", task="coco")).name.startswith("coco-llava-fare4-2")


def test_list_shows_zeroshot_tasks(home, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  tiny-zeroshot " in out and "  tiny-clip " in out
