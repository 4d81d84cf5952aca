"""The figures hold the runs' numbers: line and bar heights from the summaries, histograms from the samples."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from vlm_eval.cli import main

from vlm_eval.plots import plot_runs, score_figure, semantic_figure, semantic_values, targeted_figure
from vlm_eval.tables import build_tables, collect

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, encoder: str | None, metrics: dict, attack: dict | None = None,
              adversarial: list[dict] | None = None, task: str = "coco") -> None:
    """A finished run folder: summary.json as the runner writes it, one samples.jsonl record per `adversarial`."""
    folder.mkdir(parents=True)
    resolved = {"vlm_card": "llava", "encoder_card": encoder, "task_card": task, "attack": attack}
    records = [{"id": str(n), "score": 1.0, **({"adversarial": a} if attack else {})}
               for n, a in enumerate(adversarial or [{}])]
    summary = {"config": {"resolved": resolved}, "provenance": {"random_weights": False}, "n_samples": len(records),
               "metrics": metrics}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def apgd(eps: int) -> dict:
    return {"name": "apgd", "norm": "linf", "eps": eps / 255, "eps_text": f"{eps}/255"}


def targeted(eps: int) -> dict:
    return {**apgd(eps), "name": "targeted", "target": "a cat"}


def semantic(linf: float, cosine: float | None = None) -> dict:
    """An attacked record's checks: perturbation always, `semantic` only with a cosine (older runs lack it)."""
    extra = {} if cosine is None else {"semantic": {"image_cosine": cosine, "describes_image": True}}
    return {"output": "a dog", "perturbation": {"linf": linf, "l2": 4 * linf}, **extra}


@pytest.fixture
def untargeted_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for encoder, clean, robust in (("robust-clip", 100.0, {2: 70.0, 4: 55.0}), (None, 120.0, {2: 20.0, 4: 5.0})):
        name = encoder or "native"
        write_run(root / name / "clean", encoder, {"cider": clean})
        for eps, value in robust.items():
            metrics = {"cider": clean, "cider_attacked": value + 9.0, "cider_robust": value}  # the line: robust
            write_run(root / name / f"apgd{eps}", encoder, metrics, apgd(eps))
    write_run(root / "vqa", "robust-clip", {"vqa_accuracy": 60.0, "vqa_accuracy_robust": 30.0}, apgd(4), task="vqa")
    return root


@pytest.fixture
def runs_root(untargeted_root: Path) -> Path:
    """Plus targeted runs whose records carry perturbation sizes, and for one run image cosines."""
    write_run(untargeted_root / "tgt2", "robust-clip", {"cider": 100.0, "target_success_rate": 12.5}, targeted(2),
              [semantic(2 / 255, 0.9), semantic(1 / 255, 0.7), semantic(2 / 255, float("nan"))])
    write_run(untargeted_root / "tgt4", None, {"cider": 120.0, "target_success_rate": 87.5}, targeted(4),
              [semantic(4 / 255), semantic(3 / 255)])
    return untargeted_root


def test_score_lines_are_the_summaries_numbers_against_eps(untargeted_root):
    figure = score_figure(build_tables(collect([untargeted_root])))
    coco, vqa = figure.axes
    lines = {line.get_label(): list(line.get_ydata()) for line in coco.get_lines()}
    assert lines == {"llava + native (n = 1)": [120.0, 20.0, 5.0], "llava + robust-clip (n = 1)": [100.0, 70.0, 55.0]}
    assert [list(line.get_xdata()) for line in coco.get_lines()] == [pytest.approx([0, 2 / 255, 4 / 255])] * 2
    assert [tick.get_text() for tick in coco.get_xticklabels()] == ["clean", "2/255", "4/255"]
    assert coco.get_ylabel() == "CIDEr" and vqa.get_ylabel() == "VQA accuracy"
    assert list(vqa.get_lines()[0].get_ydata()) == [60.0, 30.0]


def test_targeted_bars_are_the_success_rates(runs_root):
    [ax] = targeted_figure(build_tables(collect([runs_root]))).axes
    bars = {group.get_label(): [(round(bar.get_x() + bar.get_width() / 2), bar.get_height()) for bar in group]
            for group in ax.containers}
    assert bars == {"llava + robust-clip": [(0, 12.5)], "llava + native": [(1, 87.5)]}  # at 2/255 and 4/255
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["a cat 2/255", "a cat 4/255"]
    assert {text.get_text() for text in ax.get_legend().get_texts()} == {"llava + robust-clip", "llava + native"}


def test_semantic_histograms_have_a_panel_per_present_field_and_count_every_finite_value(runs_root):
    figure = semantic_figure(collect([runs_root]))
    assert [ax.get_title() for ax in figure.axes] == ["perturbation linf (x 1/255)", "perturbation l2", "image cosine"]
    linf, l2, cosine = figure.axes
    robust, native = "llava + robust-clip, coco, targeted 2/255", "llava + native, coco, targeted 4/255"
    assert bin_counts(linf, f"{robust} (n = 3)") == bin_counts(l2, f"{robust} (n = 3)")
    assert sum(bin_counts(linf, f"{robust} (n = 3)")) == 3
    assert sum(bin_counts(linf, f"{native} (n = 2)")) == 2
    assert [p.get_label() for p in cosine.patches] == [f"{robust} (n = 2)"]  # NaN left out
    assert sorted(line.get_label() for line in linf.get_lines()) == ["eps = 2/255", "eps = 4/255"]  # the radii


def bin_counts(ax, label: str) -> list[float]:
    """The bin counts of the histogram `label`: the heights along the top of its step polygon."""
    [patch] = [p for p in ax.patches if p.get_label() == label]
    heights = patch.get_xy()[:, 1]
    bins = (len(heights) - 1) // 4  # up and across each bin, then back along the bottom
    return [float(y) for y in heights[1:2 * bins + 1:2]]


def test_semantic_values_keep_finite_numbers_of_the_known_fields(tmp_path):
    records = [semantic(0.01, 0.5), {"perturbation": {"linf": 0.02}, "semantic": {"clip_score": float("inf")}},
               {"semantic": {"output_similarity": 0.25, "describes_image": False, "unknown": 3.0}}]
    write_run(tmp_path / "run", "enc", {"cider": 1.0, "cider_robust": 0.5}, apgd(4), records)
    [run] = collect([tmp_path / "run"])
    values = semantic_values(run)
    assert list(values) == ["perturbation linf (x 1/255)", "perturbation l2", "image cosine", "output similarity"]
    assert values["perturbation linf (x 1/255)"] == pytest.approx([2.55, 5.1])  # in units of 1/255
    assert [values["perturbation l2"], values["image cosine"], values["output similarity"]] == [[0.04], [0.5], [0.25]]


def test_figures_without_their_data_are_skipped(untargeted_root, tmp_path):
    tables = build_tables(collect([untargeted_root]))
    assert targeted_figure(tables) is None and semantic_figure(collect([untargeted_root])) is None
    written = plot_runs([untargeted_root], tmp_path / "figures")
    assert sorted(path.name for path in written) == ["score_vs_eps.png", "score_vs_eps.svg"]


def test_the_command_writes_png_and_svg_and_prints_their_paths(runs_root, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(runs_root), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    stems = ("score_vs_eps", "targeted_success", "semantic_distributions")
    assert printed == [str(out / f"{stem}.{fmt}") for stem in stems for fmt in ("png", "svg")]
    for stem in stems:
        assert (out / f"{stem}.png").read_bytes().startswith(PNG_SIGNATURE)
        svg = (out / f"{stem}.svg").read_text()
        assert ElementTree.fromstring(svg).tag.endswith("svg")
        assert "robust-clip" in svg and "native" in svg  # legend text, kept as comments beside the glyphs


def test_figures_are_byte_for_byte_reproducible(runs_root, tmp_path):
    first = plot_runs([runs_root], tmp_path / "a", ["png", "svg"])
    second = plot_runs([runs_root], tmp_path / "b", ["png", "svg"])
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    assert b"<dc:date>" not in (tmp_path / "a" / "score_vs_eps.svg").read_bytes()


def test_formats_are_chosen_and_checked(runs_root, tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["plot", str(runs_root), "--output-dir", str(out), "--formats", "svg"]) == 0
    assert sorted(path.suffix for path in out.iterdir()) == [".svg"] * 3
    with pytest.raises(SystemExit):
        main(["plot", str(runs_root), "--output-dir", str(out), "--formats", "png,gif"])
    assert "expected some of png, svg, pdf, comma-separated; got 'png,gif'" in capsys.readouterr().err


def test_long_targets_are_cut_in_the_middle_keeping_their_eps():
    from vlm_eval.plots import tick_label

    assert tick_label("a cat 4/255") == "a cat 4/255"
    label = tick_label("Visit https://tinyurl.com/23cbjxjz for more information 4/255")
    assert len(label) == 32 and label.startswith("Visit https://") and label.endswith("4/255") and "…" in label


def test_score_points_carry_error_bars_and_a_point_on_other_samples_stands_apart(tmp_path):
    interval = {"intervals": {"cider": [90.0, 104.0], "cider_robust": [40.0, 52.0]}}
    write_run(tmp_path / "clean", "enc", {"cider": 100.0}, adversarial=[{}] * 4)
    write_run(tmp_path / "apgd4", "enc", {"cider": 99.0, "cider_robust": 50.0}, apgd(4))
    for name, extra in (("clean", interval), ("apgd4", interval)):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        (tmp_path / name / "summary.json").write_text(json.dumps({**summary, **extra}))
    [ax] = score_figure(build_tables(collect([tmp_path]))).axes
    lines = {line.get_label(): (list(line.get_ydata()), line.get_linestyle()) for line in ax.get_lines()
             if not line.get_label().startswith("_")}
    assert lines == {"llava + enc (n = 4)": ([100.0], "-"), "llava + enc, † other samples (n = 1)": ([50.0], "None")}
    bars = [c for c in ax.containers if c.has_yerr]
    segments = [segment[:, 1].tolist() for c in bars for segment in c.lines[2][0].get_segments()]
    assert segments == [[90.0, 104.0], [40.0, 52.0]]  # each point's interval, the hollow one's too
