"""`python -m vlm_eval report`: HTML from real run folders, hostile text kept inert, checked in Chromium."""

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from vlm_eval.cli import main

pytestmark = pytest.mark.slow  # reports of mini-world runs made once per module

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"
HOSTILE = '</script><script>document.body.dataset.pwned="1"</script><img src=x onerror="document.body.dataset.pwned=1">'
MINI = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco", "--n-samples", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A targeted run whose target is hostile HTML, an untargeted one and a clean one, on the mini world."""
    root = tmp_path_factory.mktemp("runs")
    sample = shutil.copytree(ASSETS / "sample", root / "world")
    common = [*MINI, "--data-root", str(sample)]
    attacks = {"hostile": ["--attack", "targeted", "--target", HOSTILE, "--steps", "2"],
               "apgd": ["--attack", "apgd", "--steps", "3"], "clean": [],
               "transfer": ["--from-adversarial", str(root / "apgd"), "--quantize-8bit"]}
    for name, args in attacks.items():
        assert main([*common, "--output-dir", str(root / name), *args]) == 0
    return {name: root / name for name in attacks}


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, of a page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def test_a_hostile_target_stays_text(runs):
    assert main(["report", str(runs["hostile"])]) == 0
    html = (runs["hostile"] / "report.html").read_text()
    page = Elements(html)
    assert len(page.all("script")) == 1  # ours; the target's two are text
    assert all(img["src"].startswith("data:image/jpeg;base64,") for img in page.all("img"))  # not src=x
    assert not any("onerror" in attrs for _, attrs in page.tags)
    assert HOSTILE in "".join(page.text)  # shown as written
    assert "&lt;script&gt;document.body.dataset.pwned" in html


def test_samples_come_largest_drop_first_with_their_images_outputs_and_checks(runs):
    assert main(["report", str(runs["apgd"]), "--output", str(runs["apgd"] / "page.html")]) == 0
    page = Elements((runs["apgd"] / "page.html").read_text())
    samples = [a for a in page.all("div") if a.get("class") == "sample"]
    records = {r["id"]: r for r in _records(runs["apgd"])}
    drops = [float(s["data-drop"]) for s in samples]
    assert [s["data-id"] for s in samples] == sorted(records, key=lambda i: -(records[i]["score"]
                                                                            - records[i]["adversarial"]["score"]))
    assert drops == sorted(drops, reverse=True) and drops[0] > 0
    assert len(page.all("img")) == 3 * len(records)  # clean, adversarial, perturbation
    text = " ".join(page.text)
    assert "reference encoder mini-clip, sentence model reference" in text  # the semantic checks' ruler
    for record in records.values():
        assert record["adversarial"]["raw_output"] in text and record["references"][0] in text
        assert f"image cos {record['adversarial']['semantic']['image_cosine']:.3f}" in text
        assert bool(int(next(s for s in samples if s["data-id"] == record["id"])["data-lost"])) == (
            not record["adversarial"]["semantic"]["describes_image"])


def test_a_transfer_run_shows_the_images_it_evaluated(runs):
    from vlm_eval.report import adversarial_pixels, load_run

    transfer, source = load_run(runs["transfer"]), load_run(runs["apgd"])
    for sample_id in transfer.records:
        shown, saved = adversarial_pixels(transfer, sample_id), adversarial_pixels(source, sample_id)
        assert torch.equal(shown, (saved * 255).round() / 255)  # rounded to 8 bits, as --quantize-8bit evaluated
        assert not torch.equal(shown, saved)
    assert main(["report", str(runs["transfer"])]) == 0
    page = Elements((runs["transfer"] / "report.html").read_text())
    assert len(page.all("img")) == 3 * len(transfer.records)  # its source's adversarial images, not "not saved"


@pytest.mark.parametrize("line", [2, 4])  # a middle line, and the last (a finished run has no cut line)
def test_a_damaged_run_folder_is_named_with_its_line(line, runs, tmp_path, capsys):
    damaged = shutil.copytree(runs["apgd"], tmp_path / "damaged")
    lines = (damaged / "samples.jsonl").read_text().splitlines()
    lines[line - 1] = lines[line - 1][:20]
    (damaged / "samples.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(damaged)]) == 2
    assert f"{damaged / 'samples.jsonl'}, line {line}: not JSON; the run folder is damaged" in capsys.readouterr().err


def test_a_comparison_shows_each_run_per_sample_and_limits_the_samples(runs, tmp_path, capsys):
    out = tmp_path / "compare.html"
    assert main(["report", str(runs["apgd"]), str(runs["clean"]), "--output", str(out), "--max-samples", "2"]) == 0
    page = Elements(out.read_text())
    samples = [a for a in page.all("div") if a.get("class") == "sample"]
    assert len(samples) == 2 and len([a for a in page.all("div") if a.get("class") == "run"]) == 4
    assert "Showing the 2 samples with the largest drop of 4" in " ".join(page.text)

    assert main(["report", str(runs["apgd"]), str(runs["clean"])]) == 2
    assert "needs --output" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a finished run folder" in capsys.readouterr().err


def test_chromium_runs_the_page_script_and_never_the_hostile_one(runs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the browser check is skipped")
    assert main(["report", str(runs["hostile"]), "--output", str(tmp_path / "r.html")]) == 0
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"]
    dom = subprocess.run([*browser, "--dump-dom", (tmp_path / "r.html").as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    page = Elements(dom)
    assert "data-pwned" not in page.all("body")[0]  # neither the script nor the onerror ran
    assert "4 of 4 shown" in " ".join(page.text)  # the page's own script ran
    assert HOSTILE in " ".join(page.text)
    subprocess.run([*browser, f"--screenshot={tmp_path / 'shot.png'}", (tmp_path / "r.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    shot = Image.open(tmp_path / "shot.png").convert("RGB")
    assert shot.size == (1200, 1600) and len(shot.getcolors(1 << 24)) > 1000  # the images rendered, not a blank page


def test_table_and_plot_commands_read_the_same_runs_through_the_cli(runs, tmp_path, capsys):
    root = runs["apgd"].parent
    assert main(["table", str(root), "--format", "paper-csv", "--ci", "none"]) == 0
    table = capsys.readouterr().out
    apgd = json.loads((runs["apgd"] / "summary.json").read_text())["metrics"]
    hostile = json.loads((runs["hostile"] / "summary.json").read_text())["metrics"]
    assert f"mini-coco: CIDEr,mini-llava,mini-clip,4,{apgd['cider']:.1f},{apgd['cider_robust']:.1f}" in table
    assert f",{hostile['target_success_rate']:.1f}" in table
    assert main(["plot", str(root), "--output-dir", str(tmp_path / "figures")]) == 0
    assert {p.name for p in (tmp_path / "figures").iterdir()} >= {"score_vs_eps.png", "semantic_distributions.svg"}
    assert main(["table", str(tmp_path / "figures")]) == 2  # a folder without runs: an error, not a traceback
    assert "holds none" in capsys.readouterr().err


def test_the_page_opens_on_a_headline_in_words(runs):
    assert main(["report", str(runs["apgd"]), "--output", str(runs["apgd"] / "words.html")]) == 0
    page = Elements((runs["apgd"] / "words.html").read_text())
    summary = json.loads((runs["apgd"] / "summary.json").read_text())
    metrics, intervals = summary["metrics"], summary["intervals"]
    [headline] = [data for data in page.text if data.startswith("mini-llava + mini-clip, mini-coco, apgd")]
    half = (intervals["cider_robust"][1] - intervals["cider_robust"][0]) / 2
    assert f"CIDEr {metrics['cider']:.1f} ± " in headline and f"→ {metrics['cider_robust']:.1f} ± {half:.1f} robust" in headline
    assert headline.endswith("(n = 4)")
    text = " ".join(page.text)
    assert "CIDEr, robust (per sample the worse of clean and attacked)" in text and "cider_robust" not in text
    linf = summary["semantic"]["perturbation_linf"]["mean"]
    assert f"mean {255 * linf:.2f}/255" in text  # sizes in units of 1/255, not raw fractions


def test_a_clean_report_shows_the_lowest_scores_first(runs):
    assert main(["report", str(runs["clean"])]) == 0
    page = Elements((runs["clean"] / "report.html").read_text())
    shown = [a["data-id"] for a in page.all("div") if a.get("class") == "sample"]
    scores = {r["id"]: r["score"] for r in _records(runs["clean"])}
    assert [scores[i] for i in shown] == sorted(scores.values())
    assert "All 4 samples, the lowest score first." in " ".join(page.text)
