"""The CLI end to end on the bundled demo set and on VQA files written in the real formats."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vlm_eval.cli import main

TINY = ["--vlm", "tiny-random-llava", "--encoder", "tiny-random", "--batch-size", "3"]
REFERENCES = Path(__file__).resolve().parent.parent / "assets" / "demo" / "captions_demo.json"


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    assert main([*TINY, "--task", "demo", "--n-samples", "all", "--output-dir", str(out)]) == 0
    return out


def test_demo_run_writes_a_self_describing_folder(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["schema_version"] == 1
    assert summary["n_samples"] == 8 and summary["n_skipped"] == 0
    assert set(summary["metrics"]) == {"cider"} and summary["metrics"]["cider"] >= 0
    prov = summary["provenance"]
    assert prov["resolution"] == 224 and prov["precision"] == "fp32" and prov["random_weights"] is True
    assert prov["encoder"]["name"] == "tiny-random" and prov["vlm"]["mode"] == "robust"
    assert set(prov["cards"]) == {"tiny-random-llava", "tiny-random", "demo"}
    assert prov["packages"]["torch"] != "not installed"
    assert summary["config"]["resolved"]["task_card"] == "demo"

    samples = read_jsonl(demo_run / "samples.jsonl")
    assert [s["id"] for s in samples] == (demo_run / "subset_ids.txt").read_text().split()
    assert all(len(s["references"]) == 5 and isinstance(s["output"], str) for s in samples)
    # the corpus CIDEr is the mean of the per-sample scores
    mean = sum(s["score"] for s in samples) / len(samples)
    assert summary["metrics"]["cider"] == pytest.approx(mean, rel=1e-6)
    assert json.loads((demo_run / "config.json").read_text())["task"] == "demo"


def test_a_finished_run_is_never_overwritten(demo_run, capsys):
    assert main([*TINY, "--task", "demo", "--n-samples", "2", "--output-dir", str(demo_run)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def test_outputs_of_an_interrupted_run_are_kept(tmp_path, capsys):
    (tmp_path / "samples.jsonl").write_text('{"id": "1", "output": "hours of work"}\n')
    assert main([*TINY, "--task", "demo", "--output-dir", str(tmp_path)]) == 2
    assert "interrupted run" in capsys.readouterr().err
    assert "hours of work" in (tmp_path / "samples.jsonl").read_text()


def test_subset_is_seeded(tmp_path):
    ids = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert main([*TINY, "--task", "demo", "--n-samples", "3", "--seed", seed, "--output-dir", str(tmp_path / name)]) == 0
        ids.append((tmp_path / name / "subset_ids.txt").read_text().split())
    assert ids[0] == ids[1] and ids[0] != ids[2] and len(ids[0]) == 3


def write_vqa_fixture(root: Path, n: int = 4, corrupt: int | None = None) -> None:
    """VQAv2-format questions/annotations and COCO-named images under root, as the vqav2 card expects."""
    (root / "vqav2").mkdir(parents=True)
    images = root / "coco" / "val2014"
    images.mkdir(parents=True)
    questions, annotations = [], []
    for i in range(n):
        path = images / f"COCO_val2014_{i:012d}.jpg"
        if i == corrupt:
            path.write_bytes(b"not a jpeg at all")
        else:
            Image.new("RGB", (64, 48), (40 * i, 100, 200)).save(path)
        questions.append({"image_id": i, "question": f"What colour is image {i}?", "question_id": 100 + i})
        answers = ["blue"] * 7 + ["red"] * 3
        annotations.append({"question_id": 100 + i, "image_id": i, "multiple_choice_answer": "blue",
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]})
    (root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (root / "vqav2" / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))


def test_vqa_run_on_real_format_files(tmp_path):
    write_vqa_fixture(tmp_path / "data")
    out = tmp_path / "run"
    code = main([*TINY, "--task", "vqav2", "--data-root", str(tmp_path / "data"), "--output-dir", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    samples = read_jsonl(out / "samples.jsonl")
    assert summary["n_samples"] == 4 and set(summary["metrics"]) == {"vqa_accuracy"}
    assert summary["config"]["resolved"]["vqa_normalize"] == "official"
    assert summary["config"]["resolved"]["postprocess"] == "llava"
    assert summary["config"]["resolved"]["max_new_tokens"] == 5
    assert all(s["references"] == ["blue"] * 7 + ["red"] * 3 and s["question"] for s in samples)
    assert summary["metrics"]["vqa_accuracy"] == pytest.approx(sum(s["score"] for s in samples) / 4)


def test_corrupt_image_is_skipped_and_counted_or_fatal_with_strict(tmp_path, capsys):
    write_vqa_fixture(tmp_path / "data", corrupt=2)
    args = [*TINY, "--task", "vqav2", "--data-root", str(tmp_path / "data")]
    assert main([*args, "--output-dir", str(tmp_path / "lenient")]) == 0
    summary = json.loads((tmp_path / "lenient" / "summary.json").read_text())
    assert summary["n_samples"] == 3 and summary["n_skipped"] == 1
    skipped = read_jsonl(tmp_path / "lenient" / "skipped.jsonl")
    assert skipped[0]["id"] == "102" and "COCO_val2014_000000000002.jpg" in skipped[0]["reason"]

    assert main([*args, "--strict", "--output-dir", str(tmp_path / "strict")]) == 2
    assert "COCO_val2014_000000000002.jpg" in capsys.readouterr().err


def test_missing_data_names_the_files_and_how_to_get_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--task", "coco", "--data-root", str(tmp_path), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "coco" / "dataset_coco.json") in err and "cocodataset.org" in err
    assert "Traceback" not in err
    assert not out.exists(), "a failed start leaves no run folder behind"


def test_every_missing_resource_is_reported_at_once(tmp_path, empty_hub_cache, capsys):
    args = ["--vlm", "llava", "--encoder", "simclip", "--task", "coco", "--data-root", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "dataset_coco.json" in err and "hossainzarif19/SimCLIP" in err and "llava-hf/llava-1.5-7b-hf" in err


def test_missing_encoder_weights_say_where_and_how(tmp_path, empty_hub_cache, capsys):
    args = ["--vlm", "tiny-random-llava", "--encoder", "fare", "--task", "demo", "--output-dir", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "chs20/fare4-clip" in err and "hf download" in err and str(empty_hub_cache) in err


@pytest.mark.parametrize("flag,value,known", [("--encoder", "nope", "simclip4"), ("--task", "nope", "vqav2"), ("--vlm", "nope", "llava")])
def test_unknown_names_list_the_known_ones(flag, value, known, capsys):
    assert main([*TINY, flag, value]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and known in err


def test_unknown_data_key_lists_the_card_files(capsys):
    assert main([*TINY, "--task", "demo", "--data", "bogus=/x"]) == 2
    assert "karpathy_json" in capsys.readouterr().err


def test_list_shows_everything_without_importing_model_code():
    code = (
        "import sys; from vlm_eval.cli import main; main(['list']); "
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("llava", "tiny-random-llava", "openai", "tecoa2", "fare4", "simclip4", "coco", "vqav2", "vizwiz"):
        assert f"  {name} " in out
    assert "simclip -> simclip4" in out and "clip -> openai" in out
    assert "HEAVY []" in out


def test_missing_java_stops_a_captioning_run_before_any_work(tmp_path, monkeypatch, capsys):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name, *a, **k))
    assert main([*TINY, "--task", "demo", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Java" in err and "default-jre-headless" in err
    assert not (tmp_path / "run").exists()


def test_scores_reach_every_sample_and_outputs_survive_a_failed_scoring(tmp_path, monkeypatch):
    """Generation replaced by each image's first reference: CIDEr per sample is high and consistent."""
    from vlm_eval.data import read_karpathy_captions
    from vlm_eval.errors import VlmEvalError
    from vlm_eval.tasks.captioning import Captioning
    from vlm_eval.vlms.llava.adapter import LlavaAdapter

    demo = Path(__file__).resolve().parent.parent / "assets" / "demo"
    refs = {s.id: s.references for s in read_karpathy_captions(demo / "dataset_demo.json", demo / "images", "test", demo / "captions_demo.json")}
    monkeypatch.setattr(LlavaAdapter, "generate", lambda self, batch, n: [refs[i][0] for i in batch.ids])
    assert main([*TINY, "--task", "demo", "--n-samples", "all", "--output-dir", str(tmp_path / "ok")]) == 0
    samples = read_jsonl(tmp_path / "ok" / "samples.jsonl")
    assert all(s["score"] > 50 for s in samples)
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["metrics"]["cider"] == pytest.approx(sum(s["score"] for s in samples) / len(samples))

    def broken_score(self, references, outputs):
        raise VlmEvalError("scoring failed")

    monkeypatch.setattr(Captioning, "score", broken_score)
    assert main([*TINY, "--task", "demo", "--n-samples", "all", "--output-dir", str(tmp_path / "broken")]) == 2
    kept = read_jsonl(tmp_path / "broken" / "shards" / "0-of-1.jsonl")
    assert [s["output"] for s in kept] == [refs[s["id"]][0] for s in kept] and len(kept) == 8
    assert not (tmp_path / "broken" / "summary.json").exists()
    monkeypatch.undo()  # scoring repaired: the outputs are merged without evaluating anything again
    assert main(["merge", str(tmp_path / "broken")]) == 0
    assert read_jsonl(tmp_path / "broken" / "samples.jsonl") == samples


def test_checkpoint_with_unknown_keys_names_the_file_and_the_layouts(tmp_path, capsys):
    import torch

    bad = tmp_path / "mystery.pt"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    assert main([*TINY, "--task", "demo", "--encoder", str(bad), "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "raw_visual" in err and "--encoder-arch" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--device", "gpu"], "unknown --device 'gpu'"),
    (["--resolution", "336", "--encoder", "fare"], "use --resolution 224"),
    (["--batch-size", "0"], "batch size must be >= 1"),
    (["--n-samples", "0"], "--n-samples must be a number >= 1, 'all' or 'auto', got 0"),
    (["--attack", "apgd", "--eps", "8"], "did you mean 8/255?"),
    (["--attack", "apgd", "--eps", "0/255"], "add --allow-zero-eps"),
])
def test_bad_options_are_user_errors(args, message, capsys):
    assert main([*TINY, "--task", "demo", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_library_config_refuses_subset_sizes_that_are_not_counts():
    from vlm_eval.config import EvalConfig
    from vlm_eval.errors import VlmEvalError

    for bad in (0, -3, True, "some", 2.5):
        with pytest.raises(VlmEvalError, match="--n-samples must be"):
            EvalConfig(n_samples=bad)
    assert [EvalConfig(n_samples=ok).n_samples for ok in ("auto", None, 7)] == ["auto", None, 7]


def test_native_mode_runs_the_vlm_own_tower(tmp_path):
    out = tmp_path / "native"
    args = ["--vlm", "tiny-random-llava", "--encoder", "native", "--resolution", "336", "--task", "demo"]
    assert main([*args, "--n-samples", "2", "--output-dir", str(out)]) == 0
    prov = json.loads((out / "summary.json").read_text())["provenance"]
    assert prov["resolution"] == 336 and prov["vlm"]["mode"] == "native" and prov["encoder"] is None


def test_reference_code_scoring_is_selected_and_recorded(tmp_path, monkeypatch):
    """--postprocess openflamingo cuts answers at ", " (and before "Question"), unlike LLaVA's processor."""
    from vlm_eval.vlms.llava.adapter import LlavaAdapter

    write_vqa_fixture(tmp_path / "data", n=2)
    monkeypatch.setattr(LlavaAdapter, "generate", lambda self, batch, n: ["Blue, red Question: why"] * len(batch.ids))
    args = [*TINY, "--task", "vqav2", "--data-root", str(tmp_path / "data")]
    assert main([*args, "--postprocess", "openflamingo", "--vqa-normalize", "always", "--output-dir", str(tmp_path / "of")]) == 0
    assert main([*args, "--output-dir", str(tmp_path / "llava")]) == 0
    of, llava = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("of", "llava"))
    assert of["config"]["resolved"]["postprocess"] == "openflamingo" and of["config"]["resolved"]["vqa_normalize"] == "always"
    assert [s["output"] for s in read_jsonl(tmp_path / "of" / "samples.jsonl")] == ["Blue"] * 2
    assert of["metrics"]["vqa_accuracy"] == pytest.approx(100.0)  # "blue" after normalisation, 7 of 10 agree
    assert llava["metrics"]["vqa_accuracy"] == 0.0


def test_a_config_file_sets_options_the_command_line_overrides(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("vlm: tiny-random-llava\nencoder: tiny-random\ntask: demo\nn_samples: 3\nseed: 7\n"
                      "data: {references_json: /not/here.json}\n")
    out = tmp_path / "run"
    assert main(["--config", str(config), "--n-samples", "2", "--data", f"references_json={REFERENCES}",
                 "--output-dir", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["task"], saved["n_samples"], saved["seed"]) == ("demo", 2, 7)  # the flag over the file
    assert saved["data"] == {"references_json": str(REFERENCES)}  # --data over the file's entry of the same key

    config.write_text("encoder: tiny-random\nbatchsize: 3\n")
    assert main(["--config", str(config)]) == 2
    assert f"--config {config}: unknown option(s) batchsize; known: vlm, encoder" in capsys.readouterr().err


def test_threat_models_in_robustbench_spelling_and_a_deliberate_no_op(tmp_path):
    out = tmp_path / "noop"
    args = [*TINY, "--task", "demo", "--n-samples", "3", "--attack", "apgd", "--steps", "2", "--norm", "Linf",
            "--eps", "0", "--allow-zero-eps", "--output-dir", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["resolved"]["attack"]["norm"] == "linf"
    assert summary["metrics"]["cider_robust"] == summary["metrics"]["cider"]  # eps 0: nothing moved
    assert summary["provenance"]["attack_precision"] == {}  # a single attack runs in the model's own dtype


def test_an_interrupted_run_names_its_folder_and_the_resume_command(tmp_path, monkeypatch, capsys):
    from vlm_eval.run import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluate_shard", interrupted)
    out = tmp_path / "run"
    assert main([*TINY, "--task", "demo", "--n-samples", "2", "--output-dir", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.count(f"python -m vlm_eval resume {out}") == 2  # at the start, and again when stopped
    assert "the finished samples are kept in" in err


def test_threads_are_set_and_recorded(tmp_path, monkeypatch):
    import os

    import torch

    before = torch.get_num_threads()
    try:
        assert main([*TINY, "--task", "demo", "--n-samples", "2", "--threads", "1", "--output-dir", str(tmp_path / "one")]) == 0
        assert torch.get_num_threads() == 1
        assert json.loads((tmp_path / "one" / "summary.json").read_text())["provenance"]["threads"] == 1
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
        assert main([*TINY, "--task", "demo", "--n-samples", "2", "--output-dir", str(tmp_path / "cores")]) == 0
        assert json.loads((tmp_path / "cores" / "summary.json").read_text())["provenance"]["threads"] == 3
        assert main([*TINY, "--task", "demo", "--threads", "0"]) == 2
    finally:
        torch.set_num_threads(before)


LEAN = [["--help"], ["--version"], ["finetune", "--help"], ["sweep", "--help"], ["rescore", "--help"],
        ["compare", "--help"], ["report", "--help"], ["table", "--help"], ["merge", "--help"]]


@pytest.mark.parametrize("argv", LEAN, ids=" ".join)
def test_help_and_version_answer_without_importing_torch(argv):
    probe = ("import runpy, sys\n"
             f"sys.argv = ['vlm_eval', *{argv!r}]\n"
             "try:\n    runpy.run_module('vlm_eval', run_name='__main__')\nexcept SystemExit as exit:\n"
             "    assert exit.code in (0, None), exit.code\n"
             "print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'matplotlib') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
