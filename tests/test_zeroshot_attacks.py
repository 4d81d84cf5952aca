"""Attacks on zero-shot classification: the logit losses by hand, AutoAttack's sequencing and per-sample worst
case on a small trained classifier, and `--attack autoattack` on the mini world through the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlm_eval.attacks.executor import Worst, execute
from vlm_eval.attacks.logit_losses import LOGIT_LOSSES
from vlm_eval.attacks.schedule import AttackPlan
from vlm_eval.cli import main
from vlm_eval.tasks.zeroshot import ClassifierTarget, ranked_others

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "miniworld" / "sample"
LOGITS = torch.tensor([[3.0, 1.0, 0.0, -1.0], [1.0, 3.0, 0.0, -1.0]])  # the same logits; sample 1 is wrong
LABELS, TARGETS = torch.tensor([0, 0]), torch.tensor([3, 3])
LSE = math.log(sum(math.exp(v) for v in (3, 1, 0, -1)))


@pytest.mark.parametrize("name,expected,scales", [
    ("ce", [LSE - 3, LSE - 1], False),
    ("dlr", [-(3 - 1) / (3 - 0), -(1 - 3) / (3 - 0)], False),  # right: negative; wrong: positive
    ("dlr-targeted", [-(3 + 1) / (3 - (0 - 1) / 2), -(1 + 1) / (3 - (0 - 1) / 2)], False),
    ("cw", [1 - 3.0, 3 - 1.0], True),
])
def test_logit_losses_are_their_formulas(name, expected, scales):
    assert LOGIT_LOSSES[name](LOGITS, LABELS, TARGETS).tolist() == pytest.approx(expected, rel=1e-6)
    if name != "ce":  # DLR does not depend on the logits' scale; the CW margin grows with it
        factor = 10 if scales else 1
        assert LOGIT_LOSSES[name](10 * LOGITS, LABELS, TARGETS).tolist() == pytest.approx(
            [factor * v for v in expected], rel=1e-5)


def test_apgd_t_targets_the_classes_after_the_true_one_by_clean_logit():
    names = ["a", "b", "c", "d"]
    assert ranked_others([0.1, 2.0, 0.5, 1.0], 1, 9, names) == ["d", "c", "a"]
    assert ranked_others([0.1, 2.0, 0.5, 1.0], 0, 2, names) == ["b", "d"]


class Linear(torch.nn.Module):
    """A small classifier on 3x4x4 images: 10 classes, trained on noisy class prototypes."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = torch.rand(10, 3, 4, 4, generator=generator)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.layer = torch.nn.Linear(48, 10)
        x, y = self.data(400, generator)
        optimiser = torch.optim.Adam(self.layer.parameters(), lr=0.05)
        for _ in range(200):
            optimiser.zero_grad()
            F.cross_entropy(self(x), y).backward()
            optimiser.step()
        self.requires_grad_(False)
        self.device = torch.device("cpu")

    def data(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=generator)
        x = (self.prototypes[y] + 0.15 * torch.randn(n, 3, 4, 4, generator=generator)).clamp(0, 1)
        return x, y

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return 10 * self.layer(pixels.flatten(1))

    def attack_logits(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return [self(pixels)]


class Recorder(ClassifierTarget):
    """Notes the rows each run attacks."""

    def __init__(self, *args):
        super().__init__(*args)
        self.attacked: list[list[int]] = []

    def loss_for(self, rows, texts, run):
        self.attacked.append(list(rows))
        return super().loss_for(rows, texts, run)


class NoCheckpoint:
    def restore(self):
        return None

    def watch(self, index, run, rows, worst):
        import contextlib

        return contextlib.nullcontext(None)

    def finished(self, index, worst):
        pass


def _attack(name: str, eps: str, steps: int = 20):
    model = Linear()
    x, y = model.data(64, torch.Generator().manual_seed(1))
    folders = [str(c) for c in range(10)]
    logits = model(x)
    texts = [[folders[label]] + ranked_others(row, label, 9, folders)
             for label, row in zip(y.tolist(), logits.tolist())]
    clean = [folders[c] for c in logits.argmax(-1).tolist()]
    target = Recorder(model, [folders[c] for c in y.tolist()], folders, [f"s{i}" for i in range(len(x))])
    scores = target.score(list(range(len(x))), clean)
    worst = execute(AttackPlan.on_classifier(name, eps, "linf", steps), x, "cpu", texts,
                    Worst.start(x, clean, scores, texts), target, NoCheckpoint())
    return model, x, y, scores, worst, target


def test_autoattack_attacks_only_the_samples_still_right_and_keeps_each_ones_worst():
    model, x, y, clean, worst, target = _attack("autoattack", "32/255")
    assert len(target.attacked) == 10  # APGD-CE, then APGD-T towards 9 classes
    still_right = [i for i in range(len(x)) if clean[i] == 100]
    for run, rows in enumerate(target.attacked):
        assert rows == still_right
        still_right = [i for i in rows if worst.runs[i][run] == 100]
    assert 0 < sum(clean) / len(x) - sum(worst.score) / len(x) < sum(clean) / len(x)  # some fooled, not all
    predicted = model(worst.pixels).argmax(-1)
    for i in range(len(x)):  # the kept image is the one that fooled the model, inside the ball
        assert (predicted[i] == y[i]).item() == (worst.score[i] == 100)
        assert worst.score[i] == min([clean[i]] + [s for s in worst.runs[i] if s is not None])
    assert (worst.pixels - x).abs().max() <= 32 / 255 + 1e-6


def test_apgd_t_is_at_least_as_strong_as_apgd_ce_and_autoattack_as_both():
    names = ("apgd-ce", "apgd-t", "pgd", "cw", "autoattack")
    robust = {name: sum(_attack(name, "32/255")[4].score) / 64 for name in names}
    # measured: apgd-ce 59.4, apgd-t 57.8, pgd 59.4, cw 60.9, autoattack 57.8 (clean 100)
    assert robust["autoattack"] <= robust["apgd-t"] <= robust["apgd-ce"] < 100, robust
    assert robust["cw"] < 100 and robust["pgd"] < 100, robust


def test_autoattack_on_the_mini_world_through_the_cli(tmp_path):
    from safetensors.torch import load_file

    from vlm_eval import cards
    from vlm_eval.encoders import ENCODER_FAMILIES
    from vlm_eval.results import adversarial_file

    out = tmp_path / "run"
    assert main(["--encoder", "mini-clip", "--task", "mini-zeroshot", "--n-samples", "12", "--data-root", str(SAMPLE),
                 "--device", "cpu", "--attack", "autoattack", "--eps", "1/255", "--steps", "10",
                 "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    assert metrics["accuracy_robust"] < metrics["accuracy"]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    fooled = [r for r in records if r["adversarial"]["score"] == 0 and r["score"] == 100]
    assert fooled and all(r["adversarial"]["perturbation"]["linf"] <= 1 / 255 + 1e-6 for r in records)
    assert all(len(r["adversarial"]["runs"]) == 10 for r in records)
    card = cards.load_card("encoders", "mini-clip")
    classes = [json.loads((SAMPLE / "zeroshot" / "class_index.json").read_text())[str(i)][1] for i in range(24)]
    classifier, _ = ENCODER_FAMILIES.get(card.family).load_classifier(card, classes, ["a {}", "a picture of a {}"],
                                                                       None, False, "cpu", torch.float32)
    for record in fooled:  # the saved image makes the classifier say what the record says
        pixels = load_file(str(adversarial_file(out, record["id"])))["pixels"]
        assert classes[classifier(pixels[None]).argmax().item()] == record["adversarial"]["prediction"]


@pytest.mark.parametrize("args,message", [
    (["--attack", "apgd"], "unknown attack 'apgd' for a zero-shot task; known: none, apgd-ce"),
    (["--attack", "autoattack", "--target", "url"], "--target is for captioning and VQA"),
    (["--from-adversarial", "."], "--from-adversarial is for captioning and VQA"),
])
def test_zero_shot_attack_options_that_do_not_apply_are_refused(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--encoder", "mini-clip", "--task", "mini-zeroshot", "--data-root", str(SAMPLE), "--device", "cpu",
                 "--output-dir", str(out), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def _mini_classifier_and_six_images() -> tuple[object, torch.Tensor, torch.Tensor]:
    """The mini CLIP's classifier over the sample's classes (two templates), six images and their labels."""
    from PIL import Image

    from vlm_eval import cards
    from vlm_eval.data import read_class_index, read_imagefolder
    from vlm_eval.encoders import ENCODER_FAMILIES

    classes = read_class_index(SAMPLE / "zeroshot" / "class_index.json")
    samples = read_imagefolder(SAMPLE / "zeroshot" / "test", SAMPLE / "zeroshot" / "class_index.json")[:6]
    card = cards.load_card("encoders", "mini-clip")
    classifier, _ = ENCODER_FAMILIES.get(card.family).load_classifier(
        card, [c.name for c in classes], ["a {}", "a picture of a {}"], None, False, "cpu", torch.float32)
    pixels = torch.stack([classifier.preprocess(Image.open(s.image_path).convert("RGB")) for s in samples])
    labels = torch.tensor([[c.folder for c in classes].index(s.id.split("/")[0]) for s in samples])
    return classifier, pixels, labels


def test_mmcoas_text_attack_changes_one_word_of_each_own_class_prompt_and_raises_the_loss():
    from vlm_eval.tasks.prompt_attack import attack_prompts

    classifier, pixels, labels = _mini_classifier_and_six_images()
    weights, prompts = attack_prompts(classifier, pixels, labels)
    clean_prompts = classifier.prompts.tokens(labels.tolist())
    attacked = classifier.prompts.tokenize([p for sample in prompts for p in sample])
    assert ((clean_prompts != attacked).sum(-1) == 1).all()  # one token per prompt
    assert torch.allclose(weights, classifier.prompts.weights(attacked), atol=1e-6)
    with torch.no_grad():
        clean_loss = F.cross_entropy(classifier(pixels), labels)
        attacked_loss = F.cross_entropy(classifier.logits_with(pixels, labels, weights), labels)
    assert attacked_loss > clean_loss + 1  # measured: 0.002 -> 9.2
    assert torch.allclose(classifier.logits_with(pixels, labels, classifier.class_weights[labels]), classifier(pixels),
                          atol=1e-5)


def test_bert_attack_on_class_prompts_replaces_one_word_with_the_masked_lms_most_harmful_candidate(tiny_masked_lm):
    from vlm_eval.attacks.text import STOP_WORDS, _substitutes, load_masked_lm
    from vlm_eval.tasks.prompt_attack import attack_prompts

    classifier, pixels, labels = _mini_classifier_and_six_images()
    masked_lm = load_masked_lm(str(tiny_masked_lm))
    weights, prompts = attack_prompts(classifier, pixels, labels, masked_lm)

    prompter, clean = classifier.prompts, classifier.prompts.texts(labels.tolist())
    features = prompter.encode(clean)

    def loss(sample: int, slot: int, text: str) -> float:  # the sample's CE with one of its prompts replaced
        own = features.view(len(labels), 2, -1)[sample].clone()
        own[slot] = prompter.encode([text])[0]
        logits = classifier.logits_with(pixels[sample : sample + 1], labels[sample : sample + 1],
                                        prompter.class_weights_of(own))
        return F.cross_entropy(logits, labels[sample : sample + 1]).item()

    with torch.no_grad():
        for sample, attacked in enumerate(prompts):
            for slot, text in enumerate(attacked):
                before = clean[sample * 2 + slot]
                changed = [(b, a) for b, a in zip(before.split(), text.split()) if a != b]
                assert len(text.split()) == len(before.split()) and len(changed) <= 1
                assert all(b.lower() not in STOP_WORDS for b, _ in changed)
                best = max([before, *_substitutes(before, *masked_lm, 8)], key=lambda c: loss(sample, slot, c))
                assert loss(sample, slot, text) == pytest.approx(loss(sample, slot, best), abs=1e-5)
        assert torch.allclose(weights, prompter.class_weights_of(prompter.encode(
            [p for sample in prompts for p in sample])), atol=1e-6)
        assert F.cross_entropy(classifier.logits_with(pixels, labels, weights), labels) > F.cross_entropy(
            classifier(pixels), labels)


def test_the_text_attack_takes_a_masked_lm_from_the_command_line(tiny_masked_lm, tmp_path, capsys):
    args = ["--encoder", "mini-clip", "--task", "mini-zeroshot", "--n-samples", "4", "--data-root", str(SAMPLE),
            "--device", "cpu", "--masked-lm", str(tiny_masked_lm)]
    assert main([*args, "--attack", "text", "--output-dir", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["adversarial"]["attack"] for r in records} == {"prompts bert-attack", "clean"}  # measured: 2 and 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["masked_lm"] == str(tiny_masked_lm)
    assert main([*args, "--attack", "apgd-ce", "--output-dir", str(tmp_path / "other")]) == 2
    assert "--masked-lm is BERT-Attack's, on the class prompts" in capsys.readouterr().err


def test_the_bimodal_attack_is_at_least_as_strong_as_the_text_attack_alone(tmp_path):
    robust = {}
    for attack in ("text", "bimodal"):
        out = tmp_path / attack
        assert main(["--encoder", "mini-clip", "--task", "mini-zeroshot", "--n-samples", "12", "--data-root",
                     str(SAMPLE), "--device", "cpu", "--attack", attack, "--eps", "1/255", "--steps", "5",
                     "--output-dir", str(out)]) == 0
        robust[attack] = json.loads((out / "summary.json").read_text())["metrics"]
        records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        assert all(len(r["adversarial"]["prompts"]) == 2 for r in records)
    assert robust["bimodal"]["accuracy_robust"] <= robust["text"]["accuracy_robust"] < robust["text"]["accuracy"]
