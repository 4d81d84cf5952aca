"""Contract tests, parametrised over the registries: a new VLM family (with a `build:` card), encoder
family (with a `random` card), attack, task type or fine-tuning objective is tested here for free.

The contracts are those of vlm_eval/contracts.py and ../shared/design.md: [0, 1] pixels in, finite
per-sample losses whose gradients reach the pixels, batch 1 = batch N, and every task type's step
turning a batch into records that its aggregation scores.
"""

import json
import math

import pytest
import torch
from PIL import Image

from vlm_eval import cards
from vlm_eval.attacks import ATTACKS, ThreatModel
from vlm_eval.contracts import Batch, Step
from vlm_eval.data.samples import Sample
from vlm_eval.encoders import ENCODER_FAMILIES
from vlm_eval.finetune import OBJECTIVES
from vlm_eval.run.models import LOADERS
from vlm_eval.tasks import TASK_TYPES
from vlm_eval.vlms import VLM_FAMILIES

BUILT_VLMS = sorted(c.name for c in cards.all_cards("vlms").values() if c.build is not None)
RANDOM_ENCODERS = sorted(c.name for c in cards.all_cards("encoders").values() if "random" in c.source)
CLASSIFIER_ENCODER = "mini-clip"  # shipped weights and tokenizer: a whole CLIP


def test_every_family_has_a_card_the_contract_tests_can_build():
    assert {cards.load_card("vlms", n).family for n in BUILT_VLMS} == set(VLM_FAMILIES.names())
    assert {cards.load_card("encoders", n).family for n in RANDOM_ENCODERS} == set(ENCODER_FAMILIES.names())
    task_types = {c.type for c in cards.all_cards("tasks").values()} - {"suite"}  # suites run other cards
    assert task_types == set(TASK_TYPES.names())


@pytest.fixture(scope="module", params=BUILT_VLMS)
def vlm(request):
    card = cards.load_card("vlms", request.param)
    vlm = VLM_FAMILIES.get(card.family).load(card, None, torch.float32, "cpu", False)
    vlm.family = VLM_FAMILIES.get(card.family)  # the tests ask it which prompt kinds to try
    return vlm


def _batch(vlm, n: int = 3) -> Batch:
    kinds = [vlm.family.prompts[i % len(vlm.family.prompts)] for i in range(n)]
    pixels = torch.rand(n, 3, vlm.image_size, vlm.image_size, generator=torch.Generator().manual_seed(0))
    return Batch([str(i) for i in range(n)], pixels, [vlm.prompt(k, "What is it?") for k in kinds])


def test_a_vlm_prompts_every_kind_its_family_claims_with_one_image(vlm):
    for kind in vlm.family.prompts:
        assert vlm.prompt(kind, "What is it?").count("<image>") == 1
    pixels = vlm.preprocess(Image.new("RGB", (50, 30), (200, 10, 10)))
    assert pixels.shape == (3, vlm.image_size, vlm.image_size) and 0 <= pixels.min() <= pixels.max() <= 1


def test_a_vlm_gives_the_same_outputs_and_losses_in_batch_1_and_batch_n(vlm):
    batch, targets = _batch(vlm), ["a red shape", "blue", "3"]
    together = vlm.generate(batch, 5)
    losses = vlm.loss_closure(batch, targets)(batch.pixels)
    for k in range(len(targets)):
        single = batch.select([k], batch.pixels[k : k + 1])
        assert vlm.generate(single, 5) == [together[k]]
        assert vlm.loss_closure(single, [targets[k]])(single.pixels).item() == pytest.approx(losses[k].item(), abs=1e-5)


def test_a_vlm_loss_is_finite_per_sample_and_its_gradient_reaches_each_samples_pixels(vlm):
    batch = _batch(vlm)
    x = batch.pixels.clone().requires_grad_(True)
    loss = vlm.loss_closure(batch, ["a", "b", "c"])(x)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    (grad,) = torch.autograd.grad(loss[0], x)
    assert grad[0].abs().sum() > 0 and grad[1:].abs().max() == 0
    embeddings = vlm.image_embeddings(batch.pixels)
    assert embeddings.shape[0] == 3 and torch.isfinite(embeddings).all()


@pytest.mark.parametrize("name", sorted({*RANDOM_ENCODERS, CLASSIFIER_ENCODER}))
def test_an_encoder_family_loads_towers_and_classifiers_over_pixels(name):
    card = cards.load_card("encoders", name)
    family = ENCODER_FAMILIES.get(card.family)
    checkpoint = family.resolve_checkpoint(card, None, False)
    assert family.weights_status(card, None)[0] and (checkpoint is None) == ("random" in card.source)
    assert family.card_from_spec("not-a-file-or-hub-id") is None
    encoder = family.load_vision(card, None, False)
    assert encoder.image_size == card.image_size and not any(p.requires_grad for p in encoder.visual.parameters())
    if not card.tokenizer:  # a vision tower only: no classifier
        return
    classifier, provenance = family.load_classifier(card, ["red", "blue", "green"], ["a {}"], None, False, "cpu",
                                                    torch.float32)
    assert provenance["name"] == card.name
    pixels = torch.stack([classifier.preprocess(Image.new("RGB", (40, 60), c)) for c in ("red", "blue")])
    pixels.requires_grad_(True)
    logits = classifier(pixels)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    (grad,) = torch.autograd.grad(logits[0, 0], pixels)
    assert grad[0].abs().sum() > 0 and grad[1].abs().max() == 0


def _toy_loss(weights: torch.Tensor):
    """A per-sample loss with a different landscape per sample (rows pick each sample's weights)."""

    def loss_fn(pixels, rows=None):
        w = weights if rows is None else weights[rows]
        return torch.sin(3 * (pixels * w).flatten(1)).sum(1)

    return loss_fn


@pytest.mark.parametrize("name", ATTACKS.names())
def test_an_attack_raises_the_loss_inside_the_ball_the_same_in_any_batch(name):
    threat = ThreatModel.parse("8/255")
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    weights = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 4
    loss_fn = _toy_loss(weights)
    result = ATTACKS.get(name)(loss_fn, x, threat, 10)
    assert (result.loss >= loss_fn(x) - 1e-6).all() and (result.loss > loss_fn(x)).any()
    assert (result.x_adv - x).abs().max() <= threat.eps + 1e-6 and 0 <= result.x_adv.min() <= result.x_adv.max() <= 1
    assert torch.allclose(result.loss, loss_fn(result.x_adv), atol=1e-5)
    alone = ATTACKS.get(name)(_toy_loss(weights[1:2]), x[1:2], threat, 10)
    assert torch.equal(alone.x_adv, result.x_adv[1:2])


def _samples(tmp_path, task_type: str) -> list[Sample]:
    folder = tmp_path / "red"
    folder.mkdir()
    return [Sample(f"red/{i}", folder / f"{i}.png", ("a red shape", "red"), "What colour?" if task_type == "vqa"
                   else None) for i in range(2)]


def _model_for(kind: str, task):
    if kind == "vlm":
        card = cards.load_card("vlms", BUILT_VLMS[0])
        return VLM_FAMILIES.get(card.family).load(card, None, torch.float32, "cpu", False)
    card = cards.load_card("encoders", CLASSIFIER_ENCODER)
    classifier, _ = ENCODER_FAMILIES.get(card.family).load_classifier(card, task.class_names, list(task.templates),
                                                                       None, False, "cpu", torch.float32)
    return classifier


@pytest.mark.parametrize("name", TASK_TYPES.names())
def test_a_task_type_turns_a_batch_into_records_its_aggregation_scores(name, tmp_path):
    of_type = [c for c in cards.all_cards("tasks").values() if c.type == name]
    card = min(of_type, key=lambda c: c.generator is None)  # a mini world card when there is one: its files exist
    task = TASK_TYPES.get(name)(card, {})
    assert task.model_kind in LOADERS
    index = tmp_path / "classes.json"
    index.write_text(json.dumps({"0": ["red", "red shape"], "1": ["blue", "blue shape"]}))
    task.setup({"class_index_json": index})
    model = _model_for(task.model_kind, task)
    samples = _samples(tmp_path, name)
    pixels = torch.stack([model.preprocess(Image.new("RGB", (30, 20), "red")) for _ in samples])
    step = Step(tmp_path, samples)
    records = task.evaluate_batch(model, samples, pixels, step)
    assert [r["id"] for r in records] == [s.id for s in samples]
    metrics = task.aggregate(records, step)
    assert all("score" in r and 0 <= r["score"] for r in records)
    assert task.metric in metrics and not math.isnan(metrics[task.metric])
    assert json.loads(json.dumps(records)) == records  # a record is JSON as it is written


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_an_objective_gives_a_finite_loss_whose_gradient_trains_what_it_says(name):
    from vlm_eval.encoders.openclip_family import load_openclip_clip
    from vlm_eval.encoders.text import load_text_tokenizer
    from vlm_eval.finetune.recipe import recipe_from_dict
    from vlm_eval.finetune.step import Context, TrainBatch
    from vlm_eval.finetune.towers import Towers

    card = cards.load_card("encoders", CLASSIFIER_ENCODER)
    towers = Towers(load_openclip_clip(card).model.requires_grad_(True))
    original = Towers(load_openclip_clip(card).model)
    recipe = recipe_from_dict({"method": name, "encoder": card.name, "data": {}, "precision": "fp32",
                               "inner": {"steps": 2}, "templates": ["a {}"]}, "test")
    ctx = Context(recipe, towers, towers, original, load_text_tokenizer(card), ["red circle", "blue square"],
                  lambda: torch.autocast("cpu", enabled=False))
    pixels = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    batch = TrainBatch(pixels, ["a red circle", "a blue square"], torch.tensor([0, 1]), [0, 1])
    objective = OBJECTIVES.get(name)()
    loss, logs = objective.loss(ctx, batch)
    assert loss.dim() == 0 and torch.isfinite(loss) and logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    image_grad = sum(p.grad.abs().sum() for p in towers.clip.visual.parameters() if p.grad is not None)
    text_grad = sum(p.grad.abs().sum() for p in towers.clip.transformer.parameters() if p.grad is not None)
    assert image_grad > 0 and (text_grad > 0) == objective.trains_text
    assert all(p.grad is None for p in original.parameters())  # the original stays as it was
