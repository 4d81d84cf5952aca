"""The tables from run folders written by hand in the runner's format: every cell traced to its summary."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from vlm_eval.cli import main
from vlm_eval.errors import VlmEvalError
from vlm_eval.tables import build_tables, collect, latex_escape, render_paper_csv, render_latex, render_markdown

EPS = {"2/255": 2 / 255, "4/255": 4 / 255}


def write_run(folder: Path, *, task: str = "coco", vlm: str | None = "llava", encoder: str | None = "enc_a",
              attack: dict | None = None, metrics: dict, random_weights: bool = False,
              defense: dict | None = None, n: int = 8, intervals: dict | None = None) -> Path:
    """A finished run folder as the runner writes it (only the fields the tables read are filled)."""
    folder.mkdir(parents=True)
    resolved = {"vlm_card": vlm, "encoder_card": encoder, "task_card": task, "attack": attack}
    summary = {"schema_version": 1, "config": {"resolved": resolved}, "n_samples": n, "n_skipped": 0,
               "provenance": {"random_weights": random_weights, "defense": defense}, "metrics": metrics,
               **({"intervals": intervals} if intervals else {})}
    (folder / "subset_ids.txt").write_text("\n".join(str(i) for i in range(n)) + "\n")
    (folder / "config.json").write_text(json.dumps(resolved))
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "samples.jsonl").write_text("")
    return folder


def attack(name: str, eps_text: str, norm: str = "linf", **extra) -> dict:
    eps = EPS.get(eps_text) or float(eps_text)
    return {"name": name, "norm": norm, "eps": eps, "eps_text": eps_text, **extra}


# (folder, task, vlm, encoder, attack, metrics): two encoders on captioning, VQA without a clean run, zero-shot
RUNS = [
    ("coco/a-clean", "coco", "llava", "enc_a", None, {"cider": 110.04}),
    ("coco/a-apgd2", "coco", "llava", "enc_a", attack("apgd", "2/255"), {"cider": 110.04, "cider_attacked": 70.31, "cider_robust": 61.27}),
    ("coco/a-apgd4", "coco", "llava", "enc_a", attack("apgd", "4/255"), {"cider": 110.04, "cider_attacked": 48.9, "cider_robust": 40.55}),
    ("coco/a-ens4", "coco", "llava", "enc_a", attack("ensemble", "4/255"), {"cider": 110.04, "cider_robust": 33.26}),
    ("coco/n-clean", "coco", "llava", None, None, {"cider": 121.96}),
    ("coco/n-apgd4", "coco", "llava", None, attack("apgd", "4/255"), {"cider": 121.96, "cider_attacked": 3.52, "cider_robust": 2.14}),
    ("vqa/a-apgd2", "vqa", "llava", "enc_a", attack("apgd", "2/255"),
     {"vqa_accuracy": 57.3, "vqa_accuracy_attacked": 25.0, "vqa_accuracy_robust": 21.86}),
    ("zs/a-clean", "imagenet", None, "enc_a", None, {"accuracy": 71.45}),
    ("zs/a-pgd4", "imagenet", None, "enc_a", attack("pgd", "4/255"), {"accuracy": 71.45, "accuracy_robust": 30.04}),
    ("tgt/a-2", "coco", "llava", "enc_a", attack("targeted", "2/255", target="a cat"),
     {"cider": 110.04, "target_success_rate": 25.0, "cider_attacked": 80.2}),
    ("tgt/a-4-short", "coco", "llava", "enc_a", attack("targeted", "4/255", target="a cat"),
     {"cider": 110.04, "target_success_rate": 62.5}),
    ("tgt/a-4-long", "coco", "llava", "enc_a", attack("targeted", "4/255", target="a cat"),
     {"cider": 110.04, "target_success_rate": 87.5}),
]
TITLES = {"coco": "coco: CIDEr", "vqa": "vqa: VQA accuracy", "imagenet": "imagenet (zero-shot): accuracy"}


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    for folder, task, vlm, encoder, threat, metrics in RUNS:
        write_run(tmp_path / "results" / folder, task=task, vlm=vlm, encoder=encoder, attack=threat, metrics=metrics)
    return tmp_path / "results"


def parse_csv(text: str) -> dict[tuple[str, ...], dict[str, str]]:
    """{(table title, *row): {column header: cell}} from the blocks render_paper_csv writes."""
    cells = {}
    for block in text.strip().split("\n\n"):
        reader = csv.reader(block.splitlines())
        header = next(reader)
        key_length = header.index("encoder") + 1  # "table", the row names, n, then the value columns
        assert header[key_length] == "n"
        for line in reader:
            cells[tuple(line[:key_length])] = dict(zip(header[key_length + 1:], line[key_length + 1:]))
    return cells


def expected_cells() -> dict[tuple[str, ...], dict[str, float]]:
    """What each cell must hold, straight from RUNS: clean metric, and the lowest robust and attacked-only
    scores per eps (single attacks report the latter; ensembles do not)."""
    expected: dict[tuple[str, ...], dict[str, float]] = {}
    for _, task, vlm, encoder, threat, metrics in RUNS:
        if threat and threat["name"] == "targeted":
            continue
        metric = next(name for name in ("cider", "vqa_accuracy", "accuracy") if name in metrics)
        row = (TITLES[task], *([vlm] if vlm else []), encoder or "native")
        cells = expected.setdefault(row, {})
        cells["clean"] = metrics[metric]
        if threat:
            cells[threat["eps_text"]] = min(cells.get(threat["eps_text"], 1e9), metrics[f"{metric}_robust"])
            if f"{metric}_attacked" in metrics:
                column = f"{threat['eps_text']} attacked"
                cells[column] = min(cells.get(column, 1e9), metrics[f"{metric}_attacked"])
    return expected


def test_every_cell_is_the_number_in_its_summary(runs_root):
    cells = parse_csv(render_paper_csv(build_tables(collect([runs_root]))))
    for row, columns in expected_cells().items():
        assert {name: cells[row][name] for name in columns} == {name: f"{v:.1f}" for name, v in columns.items()}
    assert cells[("coco: CIDEr", "llava", "native")]["2/255"] == ""  # no run: an empty cell
    assert list(cells[("vqa: VQA accuracy", "llava", "enc_a")]) == ["clean", "2/255", "2/255 attacked"]
    assert list(cells[("imagenet (zero-shot): accuracy", "enc_a")]) == ["clean", "4/255"]  # no attacked-only score


def test_the_lowest_of_two_runs_fills_the_cell_and_a_note_says_so(runs_root):
    coco = build_tables(collect([runs_root]))[0]
    # robust: ensemble 33.26 beats apgd 40.55; attacked-only: apgd's alone (an ensemble's would repeat its robust)
    assert coco.rows[("llava", "enc_a")] == [110.04, 61.27, 70.31, 33.26, 48.9]
    assert [c.header for c in coco.columns] == ["clean", "2/255", "2/255 attacked", "4/255", "4/255 attacked"]
    [note] = coco.notes
    assert "llava + enc_a, 4/255: the lowest of 2 runs" in note and "apgd 4/255 40.5" in note
    assert "the lowest of 2 runs" in render_markdown([coco]) and "% llava + enc_a, 4/255" in render_latex([coco])


def test_targeted_runs_get_their_own_table_with_the_highest_success_rate_per_cell(runs_root):
    tables = build_tables(collect([runs_root]))
    assert [t.kind for t in tables] == ["score", "targeted", "score", "score"]
    targeted = tables[1]
    assert [c.header for c in targeted.columns] == ["a cat 2/255", "a cat 4/255"]
    assert targeted.rows == {("llava", "enc_a"): [25.0, 87.5]}
    assert "the highest of 2 runs" in targeted.notes[0]


def test_zero_shot_runs_are_a_table_keyed_by_encoder(runs_root):
    zero_shot = build_tables(collect([runs_root]))[3]
    assert zero_shot.title == "imagenet (zero-shot): accuracy" and zero_shot.row_names == ("encoder",)
    assert zero_shot.rows == {("enc_a",): [71.45, 30.04]}


def test_defended_runs_get_rows_that_say_how_the_attack_treated_the_defence(tmp_path):
    ttc = {"name": "ttc", "adaptive": False, "eot_samples": 1}
    metrics = {"accuracy": 60.0, "accuracy_robust": 20.0}
    write_run(tmp_path / "plain", task="cifar10", vlm=None, attack=attack("autoattack", "2/255"), metrics=metrics)
    write_run(tmp_path / "ttc", task="cifar10", vlm=None, attack=attack("autoattack", "2/255"), defense=ttc,
              metrics={"accuracy": 50.0, "accuracy_robust": 40.0})
    write_run(tmp_path / "adaptive", task="cifar10", vlm=None, attack=attack("autoattack", "2/255"),
              defense={**ttc, "adaptive": True, "eot_samples": 4}, metrics={"accuracy": 50.0, "accuracy_robust": 5.0})
    (table,) = build_tables(collect([tmp_path]))
    assert table.rows == {("enc_a",): [60.0, 20.0], ("enc_a + ttc (non-adaptive)",): [50.0, 40.0],
                          ("enc_a + ttc (adaptive, EOT 4)",): [50.0, 5.0]}


def table_numbers(text: str, row_line: str) -> list[str]:
    return [n for line in text.splitlines() if re.match(row_line, line) for n in re.findall(r"\d+\.\d\b", line)]


def test_markdown_and_latex_hold_the_same_numbers_as_the_csv(runs_root):
    tables = build_tables(collect([runs_root]))
    from_csv = [cell for row in parse_csv(render_paper_csv(tables)).values() for cell in row.values() if cell]
    assert len(from_csv) == 15  # 5 + 3 captioning, 2 targeted, 3 VQA, 2 zero-shot
    assert table_numbers(render_markdown(tables), r"\| (llava|enc_a|enc\\_a)") == from_csv
    assert table_numbers(render_latex(tables), r"(llava|enc\\_a) &") == from_csv


def test_missing_cells_show_an_en_dash(runs_root):
    tables = build_tables(collect([runs_root]))
    assert ("| VLM | encoder | n | clean | 2/255 | 2/255 attacked | 4/255 | 4/255 attacked |\n"
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |") in render_markdown(tables)
    assert "| llava | native | 8 | 122.0 | – | – | 2.1 | 3.5 |" in render_markdown(tables)
    assert r"llava & native & 8 & 122.0 & -- & -- & 2.1 & 3.5 \\" in render_latex(tables)


def test_latex_escapes_special_characters(runs_root):
    escaped = r"a\_b \& 5\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{} "
    assert latex_escape(r"a_b & 5% #1 {x} ~^\ ") == escaped
    body = [line for line in render_latex(build_tables(collect([runs_root]))).splitlines() if not line.startswith("%")]
    assert any(r"enc\_a" in line for line in body) and not any("enc_a" in line for line in body)
    assert body.count(r"\toprule") == 4 and body.count(r"\bottomrule") == 4


def test_norms_show_in_headers_only_when_runs_mix_them(tmp_path):
    write_run(tmp_path / "linf", attack=attack("apgd", "2/255"), metrics={"cider": 90.0, "cider_robust": 50.0})
    write_run(tmp_path / "l2", attack=attack("apgd", "0.5", norm="l2"), metrics={"cider": 90.0, "cider_robust": 60.0})
    [mixed] = build_tables(collect([tmp_path]))
    assert [c.header for c in mixed.columns] == ["clean", "l2 0.5", "linf 2/255"]
    assert mixed.rows == {("llava", "enc_a"): [90.0, 60.0, 50.0]}
    [single] = build_tables(collect([tmp_path / "linf"]))
    assert [c.header for c in single.columns] == ["clean", "2/255"]


def test_clean_values_that_disagree_come_from_the_clean_run_with_a_note(tmp_path):
    write_run(tmp_path / "a", attack=attack("apgd", "2/255"), metrics={"cider": 80.0, "cider_robust": 10.0})
    write_run(tmp_path / "b", metrics={"cider": 95.0})
    write_run(tmp_path / "c", attack=attack("apgd", "4/255"), metrics={"cider": None, "cider_robust": None})
    [table] = build_tables(collect([tmp_path]))
    assert table.rows == {("llava", "enc_a"): [95.0, 10.0, None]}
    assert "clean: the runs disagree" in table.notes[0] and "shown: b" in table.notes[0]
    [attacked_only] = build_tables(collect([tmp_path / "a"]))
    assert attacked_only.rows[("llava", "enc_a")][0] == 80.0


def test_random_weight_runs_are_flagged(tmp_path):
    write_run(tmp_path / "tiny", metrics={"cider": 3.0}, random_weights=True)
    write_run(tmp_path / "real", encoder="enc_b", metrics={"cider": 90.0})
    assert "- random-weight models, meaningless scores: tiny\n" in render_markdown(build_tables(collect([tmp_path])))


def test_summaries_that_the_tables_cannot_read_are_errors_naming_the_run(tmp_path):
    write_run(tmp_path / "odd-metric", metrics={"bleu": 3.0})
    with pytest.raises(VlmEvalError, match="odd-metric/summary.json has none of the metrics cider"):
        collect([tmp_path / "odd-metric"])
    write_run(tmp_path / "no-eps", attack={"name": "apgd"}, metrics={"cider": 3.0, "cider_robust": 1.0})
    with pytest.raises(VlmEvalError, match="no-eps/summary.json lacks 'eps'"):
        collect([tmp_path / "no-eps"])


def test_transfer_runs_are_left_out_with_a_warning(runs_root, caplog):
    transfer = {"name": "from-adversarial", "source": str(runs_root / "coco/a-apgd4"), "quantize_8bit": False}
    write_run(runs_root / "coco/b-transfer", encoder="enc_b", attack=transfer, metrics={"cider": 99.0, "cider_robust": 1.0})
    with caplog.at_level(logging.WARNING):
        runs = collect([runs_root])
    assert "b-transfer" not in {run.path.name for run in runs} and len(runs) == len(RUNS)
    assert "a transfer run (--from-adversarial) is not part of the tables" in caplog.text


def test_a_folder_without_runs_is_an_error_naming_it(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(VlmEvalError, match="notes.* holds none"):
        collect([tmp_path / "notes"])
    with pytest.raises(VlmEvalError, match="missing-run does not exist"):
        collect([tmp_path / "missing-run"])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(VlmEvalError, match="half is not a finished run folder.*resume"):
        collect([tmp_path / "half"])


def test_a_parent_folder_yields_its_nested_runs_sorted_and_skips_unfinished_ones(runs_root, caplog):
    (runs_root / "deep" / "er" / "unfinished").mkdir(parents=True)
    (runs_root / "deep" / "er" / "unfinished" / "config.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="vlm_eval.tables"):
        runs = collect([runs_root])
    assert [run.path.relative_to(runs_root).as_posix() for run in runs] == sorted(folder for folder, *_ in RUNS)
    assert "unfinished" in caplog.text and "resume" in caplog.text
    assert len(collect([runs_root / "coco", runs_root, runs_root / "coco" / "a-clean"])) == len(RUNS)  # each once


@pytest.mark.parametrize("fmt, marker", [("markdown", "| llava | enc_a | 8 | 110.0 | 61.3 | 70.3 | 33.3 | 48.9 |"),
                                         ("paper-csv", "coco: CIDEr,llava,enc_a,8,110.0,61.3,70.3,33.3,48.9"),
                                         ("latex", r"llava & enc\_a & 8 & 110.0 & 61.3 & 70.3 & 33.3 & 48.9 \\"),
                                         ("csv", "coco,llava,enc_a,apgd,linf,0.0156862745")])
def test_the_command_prints_or_writes_each_format(runs_root, tmp_path, capsys, fmt, marker):
    assert main(["table", str(runs_root), "--format", fmt]) == 0
    printed = capsys.readouterr().out
    assert marker in printed
    output = tmp_path / "out" / f"table.{fmt}"
    assert main(["table", str(runs_root / "coco"), str(runs_root / "tgt"), "--format", fmt, "--output", str(output)]) == 0
    assert marker in output.read_text() and capsys.readouterr().out == ""


def test_a_robust_encoder_row_shows_the_threat_model_it_was_trained_for(tmp_path):
    write_run(tmp_path / "fare", task="mini-coco", vlm="mini-llava", encoder="mini-fare4",
              attack=attack("apgd", "2/255"), metrics={"cider": 250.0, "cider_robust": 170.0})
    write_run(tmp_path / "clip", task="mini-coco", vlm="mini-llava", encoder="mini-clip",
              attack=attack("apgd", "2/255"), metrics={"cider": 340.0, "cider_robust": 150.0})
    table = render_markdown(build_tables(collect([tmp_path])))
    assert "| mini-llava | mini-fare4 (trained l-inf 4/255) | 8 | 250.0 | 170.0 |" in table
    assert "| mini-llava | mini-clip | 8 | 340.0 | 150.0 |" in table  # trained clean: no radius


def test_cells_show_their_interval_and_a_cell_on_other_samples_is_marked(tmp_path):
    write_run(tmp_path / "clean", metrics={"cider": 110.0}, n=500, intervals={"cider": [100.0, 122.0]})
    write_run(tmp_path / "apgd", attack=attack("apgd", "4/255"), metrics={"cider": 100.0, "cider_robust": 40.0},
              n=16, intervals={"cider": [90.0, 111.0], "cider_robust": [35.0, 46.0]})
    [table] = build_tables(collect([tmp_path]))
    text = render_markdown([table])
    assert "| llava | enc_a | 500 | 110.0 ± 11.0 | 40.0 ± 5.5 † (n = 16) |" in text
    assert "llava + enc_a, 4/255: scored on other samples (n = 16, apgd)" in text and "(n = 500, clean)" in text
    assert "± half the width of the 95 % bootstrap interval" in text
    assert "| 110.0 [100.0, 122.0] | 40.0 [35.0, 46.0] † (n = 16) |" in render_markdown([table], ci="interval")
    assert "| 110.0 | 40.0 † (n = 16) |" in render_markdown([table], ci="none")
    assert r"110.0 $\pm$ 11.0 & 40.0 $\pm$ 5.5 $^\dagger$ (n = 16)" in render_latex([table])
    write_run(tmp_path / "same" / "clean", metrics={"cider": 110.0})
    write_run(tmp_path / "same" / "apgd", attack=attack("apgd", "4/255"), metrics={"cider": 110.0, "cider_robust": 4.0})
    [same] = build_tables(collect([tmp_path / "same"]))
    assert not any(cell.other_samples for cells in same.cells.values() for cell in cells if cell)
    # a partial merge: the same subset file, fewer samples scored
    write_run(tmp_path / "partial" / "clean", metrics={"cider": 110.0})
    partial = write_run(tmp_path / "partial" / "apgd", attack=attack("apgd", "4/255"), n=3,
                        metrics={"cider": 110.0, "cider_robust": 4.0})
    (partial / "subset_ids.txt").write_text((tmp_path / "partial" / "clean" / "subset_ids.txt").read_text())
    [table] = build_tables(collect([tmp_path / "partial"]))
    assert "4.0 † (n = 3)" in render_markdown([table])


def test_paper_csv_cells_stay_numbers_unless_asked(tmp_path, capsys):
    write_run(tmp_path / "clean", metrics={"cider": 110.0}, intervals={"cider": [100.0, 122.0]})
    assert main(["table", str(tmp_path), "--format", "paper-csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert float(rows[1][-1]) == 110.0
    assert main(["table", str(tmp_path), "--format", "paper-csv", "--ci", "pm"]) == 0
    assert "110.0 ± 11.0" in capsys.readouterr().out
    assert main(["table", str(tmp_path), "--format", "csv"]) == 0  # the tidy rows carry the interval's ends
    [row] = csv.DictReader(capsys.readouterr().out.splitlines())
    assert (float(row["ci_low"]), float(row["ci_high"])) == (100.0, 122.0)


def test_tidy_csv_has_one_row_per_run_and_metric(runs_root, capsys):
    assert main(["table", str(runs_root), "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == sum(len(metrics) for *_, metrics in RUNS)
    by_key = {(row["run"].split("results/")[1], row["metric"]): row for row in rows}
    for folder, task, vlm, encoder, threat, metrics in RUNS:
        for metric, value in metrics.items():
            row = by_key[(folder, metric)]
            assert (row["task"], row["vlm"], float(row["value"]), row["n_samples"]) == (task, vlm or "", value, "8")
            assert row["attack"] == (threat["name"] if threat else "none")


def test_a_rescored_run_is_a_row_of_its_own_naming_its_choices(tmp_path):
    write_run(tmp_path / "clean", metrics={"cider": 110.0})
    rescored = write_run(tmp_path / "clean-rescored", metrics={"cider": 90.0})
    summary = json.loads((rescored / "summary.json").read_text())
    summary["rescored"] = {"from": str(tmp_path / "clean"),
                           "choices": {"postprocess": "openflamingo", "data": {"references_json": "x.json"}}}
    (rescored / "summary.json").write_text(json.dumps(summary))
    [table] = build_tables(collect([tmp_path]))
    assert set(table.cells) == {("llava", "enc_a"), ("llava", "enc_a (rescored: postprocess openflamingo, data files)")}
