"""Bootstrap intervals: the resamples, CIDEr recomputed per resample as pycocoevalcap would, runs and `compare`."""

import importlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from summary_schema import check_summary
from vlm_eval.cli import main
from vlm_eval.metrics.bootstrap import Bootstrap, weighted_means
from vlm_eval.metrics.cider_d import CiderD

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenizer needs Java")
TINY = ["--vlm", "tiny-random-llava", "--encoder", "tiny-random", "--batch-size", "4"]


def test_draws_are_seeded_resamples_of_n():
    bootstrap = Bootstrap(resamples=250, seed=3, chunk=100)
    chunks = list(bootstrap.draws(7))
    assert [len(c) for c in chunks] == [100, 100, 50]
    draws = np.concatenate(chunks)
    assert (draws.sum(axis=1) == 7).all() and (draws >= 0).all()
    assert np.array_equal(draws, np.concatenate(list(Bootstrap(resamples=250, seed=3).draws(7))))
    assert not np.array_equal(draws, np.concatenate(list(Bootstrap(resamples=250, seed=4).draws(7))))
    assert 0.25 < (draws[:, 0] == 0).mean() < 0.45  # (6/7)^7 = 0.34 of resamples leave a sample out


def test_interval_of_a_mean_is_the_percentile_of_resampled_means():
    scores = np.array([0.0, 100.0, 100.0, 50.0, 0.0, 100.0, 30.0, 70.0])
    bootstrap = Bootstrap(resamples=2000, seed=0)
    low, high = bootstrap.intervals(lambda draws: {"acc": weighted_means(draws, scores)}, len(scores))["acc"]
    means = [scores[np.repeat(np.arange(8), d)].mean() for d in np.concatenate(list(bootstrap.draws(8)))]
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert low < scores.mean() < high and high - low > 20  # 8 samples this spread: a wide interval
    assert Bootstrap(resamples=0).intervals(lambda draws: {}, 8) == {}


def random_sentence(rng, words="a the dog cat runs on grass red blue car street".split()):
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, 10)))


def test_cider_d_equals_pycocoevalcap_on_the_set_and_on_resamples():
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 9)
        refs = [[random_sentence(rng) or "x" for _ in range(rng.randint(1, 4))] for _ in range(n)]
        cands = [random_sentence(rng) for _ in range(n)]
        model = CiderD(refs)
        columns = len(model.columns)
        drawn = [rng.randrange(n) for _ in range(n)]
        for items, draws in ((range(n), None), (drawn, np.bincount(drawn, minlength=n)[None])):
            reference = CiderScorer(n=4, sigma=6.0)
            for i in items:
                reference += (cands[i], refs[i])
            _, expected = reference.compute_score()
            got = model.scores(model.candidates(list(range(n)), cands), draws)[0]
            for i, value in zip(items, expected):
                assert got[i] == pytest.approx(value, rel=1e-12, abs=1e-12)
        assert len(model.columns) == columns  # candidates' n-grams never widen the reference tables


@needs_java
def test_cider_set_scores_subsets_and_tokenises_each_text_once(monkeypatch):
    cider_module = importlib.import_module("vlm_eval.metrics.cider")  # the module: the package exports its function
    refs = {"a": ["A dog runs fast."], "b": ["The blue car stops."], "c": ["Two cats sleep."]}
    cands = {"a": "a dog runs", "b": "...", "c": ""}  # punctuation only and empty score 0
    full = cider_module.cider(refs, cands)[1]
    scorer = cider_module.CiderSet(refs)
    calls = []
    real = cider_module._ptb_tokenize
    monkeypatch.setattr(cider_module, "_ptb_tokenize", lambda captions: calls.append(captions) or real(captions))
    assert scorer.per_item({"a": "a dog runs"}) == {"a": pytest.approx(full["a"], rel=1e-12)}
    assert scorer.per_item(cands) == pytest.approx(full, rel=1e-12)
    assert full["b"] == full["c"] == 0.0
    assert [sorted(t[0] for t in c.values()) for c in calls] == [["a dog runs"], ["", "..."]]  # new texts only
    with pytest.raises(ValueError, match="no refs"):
        scorer.per_item({"z": "a dog"})


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bootstrap")
    for name, extra in (("clean", []), ("attacked", ["--attack", "apgd", "--steps", "2", "--eps", "2/255"])):
        assert main([*TINY, "--task", "demo", "--n-samples", "all", *extra, "--output-dir", str(root / name)]) == 0
    return root


@needs_java
def test_a_run_reports_an_interval_around_each_score(demo_runs):
    summary = check_summary(demo_runs / "attacked")
    check_summary(demo_runs / "clean")
    assert summary["bootstrap"]["resamples"] == 1000 and summary["bootstrap"]["level"] == 0.95
    assert set(summary["intervals"]) == {"cider", "cider_attacked", "cider_robust"}
    for name, (low, high) in summary["intervals"].items():
        assert low <= summary["metrics"][name] <= high
    samples = [json.loads(line) for line in (demo_runs / "attacked" / "samples.jsonl").read_text().splitlines()]
    robust = [min(s["score"], s["adversarial"]["score"]) for s in samples]
    assert summary["metrics"]["cider_robust"] == pytest.approx(np.mean(robust))


@needs_java
def test_no_intervals_when_asked_for_none(tmp_path):
    assert main([*TINY, "--task", "demo", "--n-samples", "3", "--bootstrap", "0", "--output-dir", str(tmp_path)]) == 0
    assert "intervals" not in json.loads((tmp_path / "summary.json").read_text())
    assert main([*TINY, "--task", "demo", "--bootstrap", "-1"]) == 2


@needs_java
def test_compare_pairs_the_runs_sample_by_sample(demo_runs, tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert main(["compare", str(demo_runs / "clean"), str(demo_runs / "attacked"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"cider"} and result["n_samples"] == 8  # the one metric both report
    row = result["metrics"]["cider"]
    assert row["difference"] == pytest.approx(row["b"] - row["a"])
    assert main(["compare", str(demo_runs / "attacked"), str(demo_runs / "attacked"), "--json", str(out)]) == 0
    same = json.loads(out.read_text())["metrics"]
    assert all(r["interval"] == [0.0, 0.0] and r["difference"] == 0 for r in same.values())
    assert "no clear difference" in capsys.readouterr().out


@needs_java
def test_compare_refuses_runs_on_other_samples(demo_runs, tmp_path, capsys):
    assert main([*TINY, "--task", "demo", "--n-samples", "3", "--output-dir", str(tmp_path / "three")]) == 0
    assert main(["compare", str(demo_runs / "clean"), str(tmp_path / "three")]) == 2
    assert "5 only in A" in capsys.readouterr().err


@needs_java
def test_the_schema_refuses_what_a_summary_must_not_hold(demo_runs):
    import jsonschema

    summary = json.loads((demo_runs / "attacked" / "summary.json").read_text())
    schema = json.loads((Path(__file__).resolve().parent.parent / "docs" / "summary.schema.json").read_text())
    for broken in ({**summary, "intervals": {"cider": [1.0, 2.0, 3.0]}}, {**summary, "metrics": {}},
                   {k: v for k, v in summary.items() if k != "bootstrap"}, {**summary, "n_samples": -1},
                   {**summary, "unknown_field": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


@needs_java
def test_resampled_scores_stay_right_while_the_bootstrap_alternates_output_sets():
    cider_module = importlib.import_module("vlm_eval.metrics.cider")
    refs = {"a": ["a dog runs fast"], "b": ["the blue car stops"], "c": ["two cats sleep on a bed"]}
    clean, attacked = {"a": "a dog runs", "b": "a blue car", "c": "cats"}, {"a": "a car", "b": "", "c": "a dog"}
    draws = np.concatenate(list(Bootstrap(resamples=20, chunk=20).draws(3)))
    fresh = [cider_module.CiderSet(refs).resampled(outputs, draws) for outputs in (clean, attacked)]
    scorer = cider_module.CiderSet(refs)
    for outputs, expected in [(clean, fresh[0]), (attacked, fresh[1]), (clean, fresh[0]), (attacked, fresh[1])]:
        assert np.array_equal(scorer.resampled(outputs, draws), expected)
    assert len(scorer.resampling) == 2
    # the resamples count items in the order of `ids`: the same references in another order are another set
    assert scorer.same_references(dict(refs)) and not scorer.same_references(dict(reversed(refs.items())))


def test_set_independent_scores_are_resampled_from_the_records():
    from vlm_eval.tasks.scoring import resampled_metrics

    records = [{"id": str(i), "references": ["x"], "output": "o", "score": clean,
                "adversarial": {"output": "a", "score": attacked}}
               for i, (clean, attacked) in enumerate([(100.0, 0.0), (30.0, 60.0), (0.0, 0.0)])]
    draws = np.array([[1, 1, 1], [3, 0, 0], [0, 2, 1]])
    values = resampled_metrics(None, "vqa_accuracy", records, draws)  # VQA: no rescoring per resample
    assert values["vqa_accuracy"].tolist() == pytest.approx([130 / 3, 100.0, 20.0])
    assert values["vqa_accuracy_attacked"].tolist() == pytest.approx([20.0, 0.0, 40.0])
    assert values["vqa_accuracy_robust"].tolist() == pytest.approx([10.0, 0.0, 20.0])
