"""`rescore`: every metric again from a finished run's samples.jsonl, into a new folder, without a model."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from summary_schema import check_summary
from vlm_eval.cli import main

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="CIDEr's PTB tokenizer needs Java")
DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"
TINY = ["--vlm", "tiny-random-llava", "--encoder", "tiny-random", "--batch-size", "4"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def vqa_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rescore") / "vqa"
    assert main(["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-vqa", "--n-samples", "12",
                 "--output-dir", str(out)]) == 0
    return out


def test_rescore_applies_another_normalisation_to_the_raw_outputs(vqa_run, tmp_path):
    run = tmp_path / "vqa"
    shutil.copytree(vqa_run, run)
    records = read_jsonl(run / "samples.jsonl")
    records[0] |= {"raw_output": "Two.", "references": ["2"] * 10}
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before = digest(run)
    # OpenFlamingo's clean-up keeps "Two."; the official rule leaves an answer all humans agree on as said
    assert main(["rescore", str(run), "--postprocess", "openflamingo"]) == 0
    official = read_jsonl(tmp_path / "vqa-rescored-postprocess-openflamingo" / "samples.jsonl")
    assert main(["rescore", str(run), "--postprocess", "openflamingo", "--vqa-normalize", "always",
                 "--output", str(tmp_path / "always")]) == 0
    always = read_jsonl(tmp_path / "always" / "samples.jsonl")
    assert (official[0]["output"], official[0]["score"], always[0]["score"]) == ("Two.", 0.0, 100.0)
    assert [r["score"] for r in always[1:]] == [r["score"] for r in records[1:]]  # the mini world's answers are clean
    summary = check_summary(tmp_path / "always")
    assert summary["metrics"]["vqa_accuracy"] == pytest.approx(sum(r["score"] for r in always) / len(always))
    assert summary["config"]["resolved"]["vqa_normalize"] == "always" and "vqa_accuracy" in summary["intervals"]
    assert summary["rescored"] == {"from": str(run), "choices": {"vqa_normalize": "always", "postprocess": "openflamingo"}}
    assert digest(run) == before  # the original run is untouched
    assert main(["rescore", str(run), "--vqa-normalize", "always", "--output", str(tmp_path / "always")]) == 2


@needs_java
def test_rescore_against_another_reference_set(tmp_path):
    run = tmp_path / "demo"
    assert main([*TINY, "--task", "demo", "--n-samples", "all", "--data", f"image_dir={DEMO / 'images'}",
                 "--output-dir", str(run)]) == 0
    outputs = {r["id"]: r["output"] for r in read_jsonl(run / "samples.jsonl")}
    annotations = json.loads((DEMO / "captions_demo.json").read_text())
    for annotation in annotations["annotations"]:  # every reference becomes the model's own caption
        annotation["caption"] = outputs[str(annotation["image_id"])] or "nothing"
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    assert main(["rescore", str(run), "--data", f"references_json={tmp_path / 'captions.json'}",
                 "--output", str(tmp_path / "own")]) == 0
    rescored = read_jsonl(tmp_path / "own" / "samples.jsonl")
    assert all(set(r["references"]) == {outputs[r["id"]] or "nothing"} for r in rescored)
    old = json.loads((run / "summary.json").read_text())["metrics"]["cider"]
    summary = json.loads((tmp_path / "own" / "summary.json").read_text())
    assert summary["metrics"]["cider"] > old
    # the run's own --data files stay beside the new one
    assert summary["config"]["data"] == {"image_dir": str(DEMO / "images"),
                                         "references_json": str(tmp_path / "captions.json")}


def test_rescore_needs_a_finished_run_and_a_choice(vqa_run, tmp_path, capsys):
    assert main(["rescore", str(vqa_run)]) == 2
    assert "nothing to change" in capsys.readouterr().err
    assert main(["rescore", str(vqa_run), "--data", "questions_json"]) == 2
    assert "--data expects KEY=VALUE" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert main(["rescore", str(tmp_path / "half"), "--postprocess", "llava"]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


@needs_java
def test_rescore_cleans_up_the_attacked_outputs_too_and_takes_the_worst_again(tmp_path):
    run = tmp_path / "apgd"
    assert main([*TINY, "--task", "demo", "--n-samples", "4", "--attack", "apgd", "--steps", "1",
                 "--reference-encoder", "none", "--sentence-model", "none", "--output-dir", str(run)]) == 0
    records = read_jsonl(run / "samples.jsonl")
    caption = records[0]["references"][0]
    records[0]["adversarial"]["raw_output"] = f"{caption} Output: a hallucinated next shot"
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["rescore", str(run), "--postprocess", "openflamingo", "--output", str(tmp_path / "of")]) == 0
    rescored = read_jsonl(tmp_path / "of" / "samples.jsonl")
    assert rescored[0]["adversarial"]["output"] == caption  # cut at "Output", as OpenFlamingo's evaluation does
    assert rescored[0]["adversarial"]["score"] > records[0]["adversarial"]["score"]
    for record in rescored:
        assert record["score_robust"] == pytest.approx(min(record["score"], record["adversarial"]["score"]))
    summary = check_summary(tmp_path / "of")
    assert summary["metrics"]["cider_robust"] == pytest.approx(sum(r["score_robust"] for r in rescored) / 4)
