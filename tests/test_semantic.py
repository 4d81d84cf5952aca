"""Semantic-preservation measures on cases computed by hand, and their place in a run's files."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from vlm_eval.metrics.similarity import cosine, perturbation_norms, summarize
from vlm_eval.semantic import SemanticJudge, cut_target, keeps_clip_score, semantic_summary


def test_identical_embeddings_have_cosine_one_and_the_rest_their_known_angles():
    a = torch.tensor([[1.0, 2.0, 2.0], [3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 4.0], [0.0, 5.0, 0.0], [-1.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    assert cosine(a, a)[:3] == pytest.approx([1.0, 1.0, 1.0])
    assert cosine(a, b) == pytest.approx([1.0, 0.0, -1.0, 0.0])  # scale-free; orthogonal; opposite; zero vector
    assert cosine(a[2:3], torch.tensor([[1.0, 0.0, 0.0]]))[0] == pytest.approx(1 / math.sqrt(2))


def test_a_known_perturbation_has_its_known_norms():
    clean = torch.full((2, 3, 4, 4), 0.5)
    adversarial = clean.clone()
    adversarial[0, 1, 2, 3] += 4 / 255  # one pixel moved by 4/255
    adversarial[1] += torch.where(torch.arange(48).view(3, 4, 4) % 2 == 0, 2 / 255, -2 / 255)  # every pixel by 2/255
    one_pixel, every_pixel = perturbation_norms(clean, adversarial)
    assert one_pixel == pytest.approx({"linf": 4 / 255, "l2": 4 / 255})
    assert every_pixel == pytest.approx({"linf": 2 / 255, "l2": 2 / 255 * math.sqrt(48)})
    assert perturbation_norms(clean, clean) == [{"linf": 0.0, "l2": 0.0}] * 2
    with pytest.raises(ValueError, match="differ in shape"):
        perturbation_norms(clean, clean[:1])


def test_summaries_give_mean_median_and_the_share_under_a_threshold():
    assert summarize([0.2, 0.9, 0.4, 1.0], threshold=0.5) == pytest.approx(
        {"mean": 0.625, "median": 0.65, "share_below": 50.0})
    assert summarize([3.0]) == {"mean": 3.0, "median": 3.0}
    assert math.isnan(summarize([])["mean"])


WORDS = ("red", "cross", "url", "blue")


class WordClip:
    """A hand-made CLIP: a text is its counts of WORDS; every image is "a red cross" in that space."""

    def embed_images(self, pixels):
        return torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(len(pixels), 1)

    def embed_texts(self, texts):
        return torch.tensor([[float(t.split().count(w)) for w in WORDS] for t in texts])


def test_identical_images_and_outputs_score_one_and_the_rest_their_known_cosines():
    judge = SemanticJudge(embed_images=lambda x: x.flatten(1), embed_texts=WordClip().embed_texts)
    clean = torch.tensor([[[[0.2, 0.4]]], [[[0.3, 0.0]]]])
    adversarial = torch.tensor([[[[0.2, 0.4]]], [[[0.0, 0.3]]]])  # the same; orthogonal
    checks = judge.check(clean, adversarial, ["red cross", "red cross"], ["red cross", "blue"])
    assert checks == [pytest.approx({"image_cosine": 1.0, "output_similarity": 1.0}),
                      pytest.approx({"image_cosine": 0.0, "output_similarity": 0.0})]


def test_clip_scores_and_whether_the_output_still_describes_the_image():
    judge = SemanticJudge(reference=WordClip())
    image = torch.zeros(6, 3, 2, 2)
    clean = ["red cross"] * 5 + ["blue"]
    adversarial = ["red cross url", "url", "red url url", "blue", "url red cross url url", ""]
    untargeted = judge.check(image, image, clean, adversarial)
    assert [c["clip_score_clean"] for c in untargeted] == pytest.approx([100.0] * 5 + [0.0])
    # cos((1,1,0,0), (1,1,1,0)) = 2/(sqrt2 sqrt3); (0,0,1,0): 0; (1,0,2,0): 1/(sqrt2 sqrt5); blue: 0;
    # (1,1,3,0): 2/(sqrt2 sqrt11); the empty text: 0
    expected = [200 / math.sqrt(6), 0.0, 100 / math.sqrt(10), 0.0, 200 / math.sqrt(22), 0.0]
    assert [c["clip_score"] for c in untargeted] == pytest.approx(expected)
    # 81.6 keeps >= 80 of 100; the empty output keeps the clean 0 yet describes nothing
    assert [c["describes_image"] for c in untargeted] == [True, False, False, False, False, False]
    assert untargeted[0]["image_cosine_reference"] == pytest.approx(1.0)
    targeted = judge.check(image, image, clean, adversarial, targets=["url"] * 6)
    assert [c["clip_score"] for c in targeted] == pytest.approx(expected)  # the whole output, target included
    # judged without the target: "red cross"; nothing; "red"; "blue"; "red cross"; nothing
    assert [c["describes_image"] for c in targeted] == [True, False, False, False, True, False]


def test_the_target_is_cut_out_in_any_case_with_its_punctuation():
    assert cut_target("A red cross. Visit https://x.io now!", "visit https://x.io now") == "A red cross"
    assert cut_target("URL url", "url") == ""
    assert cut_target("a red cross", "") == "a red cross"
    assert keeps_clip_score(80.0, 100.0) and not keeps_clip_score(79.9, 100.0)
    assert keeps_clip_score(-1.0, -1.0) and not keeps_clip_score(-2.0, -1.0)


def test_the_summary_aggregates_every_check_with_its_threshold():
    records = [{"id": "1"}]  # a clean record has none
    for cosine_value, describes in ((0.9, True), (0.5, False), (0.7, False)):
        records.append({"adversarial": {"perturbation": {"linf": 0.01, "l2": 1.0},
                                        "semantic": {"image_cosine": cosine_value, "describes_image": describes}}})
    summary = semantic_summary(records)
    assert summary["image_cosine"] == pytest.approx({"mean": 0.7, "median": 0.7, "share_below": 200 / 3})
    assert summary["describes_image"] == pytest.approx({"share": 100 / 3})
    assert summary["perturbation_l2"] == {"mean": 1.0, "median": 1.0}
    assert semantic_summary(records[:1]) == {}


ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"


def test_the_reference_clip_matches_a_mini_world_image_with_its_own_caption():
    from vlm_eval.cards import load_card
    from vlm_eval.data import load_image, preprocess_image
    from vlm_eval.encoders.reference import ReferenceClip

    reference, loaded = ReferenceClip.load(load_card("encoders", "mini-clip"), None, False, "cpu")
    assert loaded.checkpoint.endswith("mini-clip.safetensors")
    image = preprocess_image(load_image(ASSETS / "sample" / "images" / "test" / "3000000.png", "3000000"), 224)
    at_224, at_336 = image[None], torch.nn.functional.interpolate(image[None], size=336, mode="bilinear")
    assert cosine(reference.embed_images(at_224), reference.embed_images(at_224)) == pytest.approx([1.0])
    assert cosine(reference.embed_images(at_224), reference.embed_images(at_336))[0] > 0.9  # resized to its own size
    texts = reference.embed_texts(["a blue cross and a yellow square", "a green triangle and a red circle"])
    assert texts.norm(dim=1).tolist() == pytest.approx([1.0, 1.0])
    own, other = cosine(reference.embed_images(at_224).repeat(2, 1), texts)
    assert own > other + 0.2, (own, other)


@pytest.fixture(scope="module")
def sentence_model(tmp_path_factory) -> Path:
    """A sentence-transformers folder as `save` writes it: a 1-layer random BERT and mean pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("sentence")
    words = "[PAD] [UNK] [CLS] [SEP] [MASK] a red blue green cross square circle triangle and".split()
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(root / "bert")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root / "bert")
    model = SentenceTransformer(modules=[Transformer(str(root / "bert")), Pooling(16)], device="cpu")
    model.save(str(root / "model"))
    return root / "model"


def test_a_sentence_model_folder_loads_and_embeds_unit_vectors(sentence_model, tmp_path):
    from vlm_eval.encoders.sentence import load_sentence_model, sentence_model_status
    from vlm_eval.errors import MissingResourceError

    embed = load_sentence_model(str(sentence_model), "cpu")
    vectors = embed(["a red cross", "a red cross", "a green circle and a blue square"])
    assert vectors.norm(dim=1).tolist() == pytest.approx([1.0] * 3)
    same, different = cosine(vectors[:2], vectors[1:])
    assert same == pytest.approx(1.0) and different < 0.9999
    assert sentence_model_status(str(tmp_path))[0] is False  # a folder without a model
    present, where = sentence_model_status("no-such-org/no-such-model")
    assert not present and "hf download no-such-org/no-such-model" in where
    with pytest.raises(MissingResourceError, match="--sentence-model none"):
        load_sentence_model("no-such-org/no-such-model", "cpu")


@pytest.mark.slow
def test_an_attacked_run_records_each_perturbation_and_summarizes_them(tmp_path):
    from vlm_eval.cli import main

    sample = shutil.copytree(ASSETS / "sample", tmp_path / "world")
    args = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco", "--n-samples", "all",
            "--device", "cpu", "--data-root", str(sample)]
    assert main([*args, "--output-dir", str(tmp_path / "clean")]) == 0
    assert "semantic" not in json.loads((tmp_path / "clean" / "summary.json").read_text())

    assert main([*args, "--output-dir", str(tmp_path / "run"), "--attack", "apgd", "--eps", "2/255", "--steps", "3"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    sizes = [r["adversarial"]["perturbation"] for r in records]
    assert all(0 < s["linf"] <= 2 / 255 + 1e-6 and s["linf"] < s["l2"] for s in sizes)
    semantic = json.loads((tmp_path / "run" / "summary.json").read_text())["semantic"]
    assert semantic["perturbation_linf"]["mean"] == pytest.approx(sum(s["linf"] for s in sizes) / len(sizes))
    l2 = sorted(s["l2"] for s in sizes)
    assert len(l2) == 12 and semantic["perturbation_l2"]["median"] == pytest.approx((l2[5] + l2[6]) / 2)
    checks = [r["adversarial"]["semantic"] for r in records]
    assert set(checks[0]) == {"image_cosine", "image_cosine_reference", "output_similarity", "clip_score_clean",
                              "clip_score", "describes_image"}  # mini-llava's card: mini-clip, its text tower
    for key in ("image_cosine", "image_cosine_reference", "output_similarity"):
        values = [c[key] for c in checks]
        assert all(-1 - 1e-6 <= v <= 1 + 1e-6 for v in values) and min(values) < 0.9999  # 2/255 moves the non-robust mini CLIP
        assert semantic[key]["share_below"] == pytest.approx(100 * sum(v < 0.8 if "image" in key else v < 0.5
                                                                       for v in values) / 12)
    unchanged = [c["output_similarity"] for r, c in zip(records, checks) if r["raw_output"] == r["adversarial"]["raw_output"]]
    assert unchanged == pytest.approx([1.0] * len(unchanged))
    assert semantic["describes_image"]["share"] == pytest.approx(100 * sum(c["describes_image"] for c in checks) / 12)


def _attack_args(sample, out):
    return ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco", "--n-samples", "2",
            "--device", "cpu", "--data-root", str(sample), "--attack", "pgd", "--steps", "1", "--output-dir", str(out)]


@pytest.mark.slow
def test_a_sentence_model_folder_serves_a_run_and_none_skips_the_models(sentence_model, tmp_path):
    from vlm_eval.cli import main

    sample = shutil.copytree(ASSETS / "sample", tmp_path / "world")
    assert main([*_attack_args(sample, tmp_path / "st"), "--sentence-model", str(sentence_model)]) == 0
    summary = json.loads((tmp_path / "st" / "summary.json").read_text())
    assert summary["provenance"]["semantic"]["sentence_model"] == str(sentence_model)
    assert "output_similarity" in summary["semantic"]

    assert main([*_attack_args(sample, tmp_path / "bare"), "--reference-encoder", "none", "--sentence-model", "none"]) == 0
    record = json.loads((tmp_path / "bare" / "samples.jsonl").read_text().splitlines()[0])
    assert set(record["adversarial"]["semantic"]) == {"image_cosine"}  # the VLM's own tower needs no model


@pytest.mark.parametrize("args,message", [
    (["--sentence-model", "no-such-org/no-such-model"], "sentence model 'no-such-org/no-such-model' of the semantic"),
    (["--reference-encoder", "none"], "--sentence-model reference embeds outputs with the reference encoder"),
    (["--reference-encoder", "nope"], "unknown encoder 'nope'"),
])
def test_bad_semantic_models_fail_before_any_work(args, message, tmp_path, capsys):
    from vlm_eval.cli import main

    sample = shutil.copytree(ASSETS / "sample", tmp_path / "world")
    assert main([*_attack_args(sample, tmp_path / "run"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
