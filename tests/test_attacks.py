"""Threat model, PGD and APGD on small classifiers (the attacks know no models: a CE closure is enough)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlm_eval.attacks import ATTACKS, ThreatModel, apgd, parse_eps, pgd, project, random_start
from vlm_eval.errors import NonFiniteLossError

THREATS = [ThreatModel.parse("8/255"), ThreatModel.parse(0.5, "l2")]


def test_eps_is_parsed_from_fractions_and_numbers():
    assert parse_eps("4/255") == pytest.approx(4 / 255)
    assert parse_eps(" 0.5 ") == 0.5 and parse_eps(2) == 2.0
    for bad in ("abc", "-1/255", "1/0", "nan", float("inf")):
        with pytest.raises(ValueError, match="eps"):
            parse_eps(bad)
    threat = ThreatModel.parse("4/255")
    assert threat.describe() == {"norm": "linf", "eps": 4 / 255, "eps_text": "4/255"}
    with pytest.raises(ValueError, match="unknown norm"):
        ThreatModel.parse("4/255", "l1")
    assert ThreatModel.parse("4/255", "Linf").norm == "linf" and ThreatModel.parse(2.5, "L2").eps == 2.5
    with pytest.raises(ValueError, match="did you mean 8/255"):  # an l-inf radius above the whole pixel range
        ThreatModel.parse("8", "Linf")


@pytest.mark.parametrize("threat", THREATS, ids=lambda t: t.norm)
def test_projection_lands_in_the_ball_and_in_range_and_keeps_inside_points(threat):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    far = project(x + torch.randn_like(x) * 3, x, threat)
    _assert_in_ball(far, x, threat)
    assert torch.equal(project(far, x, threat), far)  # idempotent
    inside = (x + (far - x) * 0.5).clamp(0, 1)
    assert torch.allclose(project(inside, x, threat), inside)


@pytest.mark.parametrize("threat", THREATS, ids=lambda t: t.norm)
def test_random_start_is_in_the_ball_and_seeded_per_sample(threat):
    x = torch.rand(3, 3, 8, 8)
    batch = random_start(x, threat, [5, 6, 7])
    _assert_in_ball(batch, x, threat)
    assert not torch.equal(batch, x)
    alone = random_start(x[1:2], threat, [6])
    assert torch.equal(batch[1:2], alone)  # a sample's start does not depend on its batch


class Classifier(nn.Module):
    """A small CNN on 3x8x8 images: 4 classes, each a colour prototype with a pattern."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 4))

    def forward(self, x):
        return self.net(x)


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, 4, (n,), generator=g)
    x = (prototypes[y] * 0.3 + torch.rand(n, 3, 8, 8, generator=g) * 0.7).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = Classifier()
    x, y = _data(2000, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval().requires_grad_(False)


def _ce(model, y):
    return lambda x, rows: F.cross_entropy(model(x), y[rows], reduction="none")


def _assert_in_ball(x_adv, x, threat):
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if threat.norm == "linf" else delta.norm(dim=1)
    assert (size <= threat.eps * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize("threat", THREATS, ids=lambda t: t.norm)
def test_every_attack_stays_in_the_ball_and_never_ends_worse_than_it_started(name, threat, classifier):
    x, y = _data(16, 2)
    loss_fn = _ce(classifier, y)
    start = loss_fn(x, torch.arange(16))
    result = ATTACKS.get(name)(loss_fn, x, threat, 10)
    _assert_in_ball(result.x_adv, x, threat)
    assert (result.loss >= start - 1e-6).all()
    assert torch.allclose(result.loss, loss_fn(result.x_adv, torch.arange(16)), atol=1e-5)  # the loss is the returned point's
    assert (result.loss > start).float().mean() > 0.8  # and it does attack
    assert (result.steps == 10).all()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_minimising_lowers_the_loss(name, classifier):
    x, y = _data(16, 3)
    wrong = (y + 1) % 4  # a target class to reach
    loss_fn = _ce(classifier, wrong)
    start = loss_fn(x, torch.arange(16))
    result = ATTACKS.get(name)(loss_fn, x, THREATS[0], 10, maximize=False)
    assert (result.loss <= start + 1e-6).all() and (result.loss < start).float().mean() > 0.8


@pytest.mark.parametrize("name", ATTACKS.names())
def test_same_seed_same_result_and_batch_of_n_equals_n_batches_of_one(name, classifier):
    x, y = _data(6, 4)
    loss_fn = _ce(classifier, y)
    seeds = [11, 12, 13, 14, 15, 16]
    attack = ATTACKS.get(name)
    first = attack(loss_fn, x, THREATS[0], 8, random_start=True, seeds=seeds)
    again = attack(loss_fn, x, THREATS[0], 8, random_start=True, seeds=seeds)
    assert torch.equal(first.x_adv, again.x_adv)
    for i in range(6):
        alone = attack(lambda z, rows: loss_fn(z, rows + i), x[i : i + 1], THREATS[0], 8, random_start=True,
                       seeds=seeds[i : i + 1])
        assert torch.allclose(alone.x_adv, first.x_adv[i : i + 1], atol=1e-6)
        assert alone.loss.item() == pytest.approx(first.loss[i].item(), rel=1e-5)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_done_samples_leave_the_batch(name, classifier):
    x, y = _data(8, 5)
    seen = []

    def loss_fn(z, rows):
        seen.append(rows.tolist())
        return F.cross_entropy(classifier(z), y[rows], reduction="none")

    calls = []

    def done(step, rows, x_best, loss_best):
        calls.append((step, rows.tolist()))
        assert torch.allclose(loss_best, F.cross_entropy(classifier(x_best), y[rows], reduction="none"), atol=1e-5)
        return (rows % 2 == 0) | ((rows == 3) & (step == 2))

    result = ATTACKS.get(name)(loss_fn, x, THREATS[0], 6, done=done)
    assert seen[0] == list(range(8)) and seen[1:3] == [[1, 3, 5, 7]] * 2 and all(r == [1, 5, 7] for r in seen[3:])
    assert [step for step, _ in calls] == list(range(7))
    assert result.steps.tolist() == [0, 6, 0, 2, 0, 6, 0, 6]
    assert torch.equal(result.x_adv[0::2], x[0::2])  # a sample that left at once keeps its start


class Interrupted(Exception):
    pass


class MemoryHook:
    """Keeps the state after every step and stops the attack after `stop_after` steps, as a kill would."""

    def __init__(self, saved=None, stop_after=None):
        self.saved, self.stop_after, self.steps = saved, stop_after, []

    def resume(self):
        return self.saved

    def after_step(self, step, active, state):
        self.steps.append((step, active))
        self.saved = {k: v.clone() for k, v in state().items()}
        if step == self.stop_after:
            raise Interrupted


@pytest.mark.parametrize("name", ATTACKS.names())
def test_an_interrupted_attack_resumes_where_it_stopped_and_ends_as_if_never_stopped(name, classifier):
    x, y = _data(6, 8)
    loss_fn = lambda z, rows: F.cross_entropy(classifier(z), y[rows], reduction="none")  # noqa: E731
    done = lambda step, rows, x_best, loss: (rows == 2) & (step >= 4)  # noqa: E731
    attack = ATTACKS.get(name)
    whole = attack(loss_fn, x, THREATS[0], 20, done=done, random_start=True, seeds=range(6))
    hook = MemoryHook(stop_after=7)
    with pytest.raises(Interrupted):
        attack(loss_fn, x, THREATS[0], 20, done=done, hook=hook, random_start=True, seeds=range(6))
    resumed_hook = MemoryHook(saved=hook.saved)
    resumed = attack(loss_fn, x, THREATS[0], 20, done=done, hook=resumed_hook, random_start=True, seeds=range(6))
    assert [s for s, _ in resumed_hook.steps] == list(range(8, 21))  # no step is taken twice
    assert resumed_hook.steps[-1][1] == 5  # sample 2 left at step 4, before the interruption
    assert torch.equal(resumed.x_adv, whole.x_adv) and torch.equal(resumed.loss, whole.loss)
    assert torch.equal(resumed.steps, whole.steps)


def test_a_nan_loss_names_the_rows():
    x = torch.rand(3, 3, 4, 4)
    with pytest.raises(NonFiniteLossError, match=r"rows \[1\]"):
        apgd(lambda z, rows: z.flatten(1).sum(1) * torch.tensor([1.0, float("nan"), 1.0])[rows], x, THREATS[0], 3)


def _robust_accuracy(model, x_adv, y):
    return (model(x_adv).argmax(1) == y).float().mean().item() * 100


def test_apgd_is_at_least_as_strong_as_pgd_and_matches_a_reference_apgd(classifier):
    torchattacks = pytest.importorskip("torchattacks", reason="test dependency: pip install torchattacks")
    x, y = _data(500, 6)
    threat = ThreatModel.parse("16/255")  # robust accuracy about 37 %: room on both sides
    clean = _robust_accuracy(classifier, x, y)
    ours = _robust_accuracy(classifier, apgd(_ce(classifier, y), x, threat, 20, random_start=True).x_adv, y)
    with_pgd = _robust_accuracy(classifier, pgd(_ce(classifier, y), x, threat, 20, random_start=True).x_adv, y)
    torch.manual_seed(0)
    reference = torchattacks.APGD(classifier, norm="Linf", eps=threat.eps, steps=20, n_restarts=1, loss="ce", seed=0)
    theirs = _robust_accuracy(classifier, reference(x, y), y)
    assert 10 < ours < clean - 10, "the setting must leave something to compare"
    assert ours <= with_pgd
    assert abs(ours - theirs) <= 1.0, (ours, theirs)


def _minus_dlr(model, y):
    """Minus torchattacks' DLR loss per sample, in its arithmetic: -(z_y - max_{i != y} z_i) / (z_(1) - z_(3))."""
    def loss(x, rows):
        z = model(x)
        z_sorted, order = z.sort(dim=1)
        top_is_y = (order[:, -1] == y[rows]).float()
        runner_up = z_sorted[:, -2] * top_is_y + z_sorted[:, -1] * (1.0 - top_is_y)  # max over i != y
        dlr = -(z.gather(1, y[rows, None])[:, 0] - runner_up) / (z_sorted[:, -1] - z_sorted[:, -3] + 1e-12)
        return -dlr
    return loss


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_follows_the_reference_apgd_step_for_step_from_the_same_start(loss, classifier, monkeypatch):
    """Same start (x + eps, which torchattacks takes when its uniform draw is constant): the same best points.

    With DLR (negative where the model is right) we minimise minus DLR: the reference's first step never
    counts as a rise, as its objective is compared with the zeros its loss history starts with."""
    torchattacks = pytest.importorskip("torchattacks", reason="test dependency: pip install torchattacks")
    x, y = _data(200, 7)
    threat = ThreatModel.parse("16/255")
    reference = torchattacks.APGD(classifier, norm="Linf", eps=threat.eps, steps=50, n_restarts=1, loss=loss, seed=0)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "rand", lambda *shape, **kw: torch.full(*shape, 0.75))  # its start becomes x + eps
        x_best, _, loss_best, _ = reference.attack_single_run(x, y)
    if loss == "ce":
        ours = apgd(_ce(classifier, y), x, threat, 50, x_init=x + threat.eps)
    else:
        ours = apgd(_minus_dlr(classifier, y), x, threat, 50, x_init=x + threat.eps, maximize=False)
        loss_best = -loss_best
    assert torch.allclose(ours.loss, loss_best, atol=1e-6)
    assert torch.allclose(ours.x_adv, x_best, atol=1e-7)
