"""`python -m vlm_eval report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page per run or comparison.

Per sample: the clean image, each run's adversarial image and its perturbation amplified, the
references, clean and adversarial outputs side by side with their scores, the semantic checks and
the attack that won. Images are inlined as JPEG data URIs, so the file travels alone.

The page is rendered by jinja2 with autoescaping on: outputs, targets and references are model or
user text that may hold HTML or script, and reach the page only as text.
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vlm_eval import results
from vlm_eval.errors import VlmEvalError
from vlm_eval.program import program

log = logging.getLogger(__name__)

DEFAULT_MAX_SAMPLES = 100  # images make a page heavy: ~110 kB per sample and run
JPEG_QUALITY = 90
METRIC_NAMES = {"cider": "CIDEr", "vqa_accuracy": "VQA accuracy"}
METRIC_SUFFIXES = {"": "", "_attacked": ", attacked outputs", "_robust": ", robust (per sample the worse of clean and attacked)"}
METRIC_LABELS = {base + suffix: name + words for base, name in METRIC_NAMES.items() for suffix, words in METRIC_SUFFIXES.items()}
METRIC_LABELS |= {"target_success_rate": "target success rate (%)", "target_exact_match_rate": "exact target match rate (%)",
                  "target_steps_median": "median steps to the target"}


@dataclass
class RunFolder:
    """A finished run as the report reads it: its summary and its records."""

    folder: Path
    summary: dict[str, Any]
    records: dict[str, dict[str, Any]]  # by sample id, in the run's order

    @property
    def resolved(self) -> dict[str, Any]:
        return self.summary["config"]["resolved"]

    @property
    def label(self) -> str:
        r = self.resolved
        models = f"{r['vlm_card']} + {r['encoder_card'] or 'native tower'}"
        return f"{models}, {r['task_card']}, {attack_text(r['attack'])}"


@dataclass
class Cell:
    """One run's view of one sample."""

    output: str
    score: str
    adversarial_output: str | None = None
    adversarial_score: str = ""
    adversarial_image: str | None = None
    perturbation_image: str | None = None
    perturbation_caption: str = "perturbation"
    target: str | None = None
    target_label: str = ""
    success: bool = False
    attack: str = ""
    checks: str = ""


@dataclass
class SampleView:
    id: str
    question: str | None
    references: list[str]
    clean_image: str | None
    cells: list[Cell | None] = field(default_factory=list)
    drop: float = 0.0
    changed: bool = False
    success: bool = False
    lost: bool = False
    search: str = ""


def load_run(folder: Path) -> RunFolder:
    summary = results.read_summary(folder)
    if summary["config"]["resolved"]["vlm_card"] is None:
        raise VlmEvalError(f"{folder} is a zero-shot classification run: reports cover captioning and VQA runs")
    return RunFolder(Path(folder), summary, {r["id"]: r for r in results.read_samples(folder)})


def attack_text(attack: dict[str, Any] | None) -> str:
    if attack is None:
        return "clean"
    if attack["name"] == "from-adversarial":
        return f"adversarial images of {attack['source']}"
    target = f", target {attack['target']!r}" if attack.get("target") else ""
    return f"{attack['name']} {attack['norm']} eps {attack['eps_text']}, {attack['steps']} steps{target}"


def metric_label(key: str) -> str:
    """"CIDEr, robust (per sample the worse of clean and attacked)" for "cider_robust"."""
    return METRIC_LABELS.get(key, key.replace("_", " "))


def scored(run: RunFolder, key: str) -> str:
    """"64.7 ± 9.8": a metric with half its interval's width, when the run has one."""
    value, interval = run.summary["metrics"].get(key), run.summary.get("intervals", {}).get(key)
    return fmt(value) + (f" ± {(interval[1] - interval[0]) / 2:.1f}" if interval else "")


def headline(run: RunFolder) -> str:
    """The result in a line: "mini-coco, mini-llava + mini-clip, apgd linf eps 4/255: CIDEr 340.4 → 64.7 (n = 100)"."""
    metrics = run.summary["metrics"]
    metric = next((key for key in METRIC_NAMES if key in metrics), None)
    if metric is None:
        return run.label
    result = f"{METRIC_NAMES[metric]} {scored(run, metric)}"
    if f"{metric}_robust" in metrics:
        result += f" → {scored(run, metric + '_robust')} robust"
    elif f"{metric}_attacked" in metrics:
        result += f" → {scored(run, metric + '_attacked')} attacked"
    if "target_success_rate" in metrics:
        result += f"; target reached in {scored(run, 'target_success_rate')} % of samples"
    return f"{run.label}: {result} (n = {run.summary['n_samples']})"


def run_meta(run: RunFolder) -> list[tuple[str, str]]:
    s, prov = run.summary, run.summary["provenance"]
    rows = [(metric_label(name), scored(run, name)) for name in s["metrics"]]
    rows += [("samples", f"{s['n_samples']} ({s['n_skipped']} skipped)"),
             ("model", f"{prov['resolution']} px, {prov['precision']}, {prov['device']}"),
             ("folder", str(run.folder)), ("git revision", str(prov.get("git_revision")))]
    if s.get("intervals"):
        rows.append(("±", "half the width of the 95 % bootstrap interval over the samples"))
    judges = prov.get("semantic")
    if judges:
        reference = (judges["reference_encoder"] or {}).get("name", "none")
        rows.append(("semantic models", f"reference encoder {reference}, sentence model {judges['sentence_model']}"))
    for name, stats in s.get("semantic", {}).items():
        rows.append(semantic_row(name, stats))
    return rows


def semantic_row(name: str, stats: dict[str, float | None]) -> tuple[str, str]:
    """A semantic check's aggregates, labelled in words; l-inf sizes in units of 1/255."""
    scale, unit = (255.0, "/255") if name == "perturbation_linf" else (1.0, "")
    label = {"perturbation_linf": "perturbation l-inf", "perturbation_l2": "perturbation l2"}.get(name, name.replace("_", " "))
    values = ", ".join(f"{k.replace('_', ' ')} {fmt(v, 1)}" if k.startswith("share") or v is None
                       else f"{k.replace('_', ' ')} {v * scale:.{2 if unit else 4}f}{unit}" for k, v in stats.items())
    return label, values


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):  # bools too
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def checks_text(adversarial: dict[str, Any]) -> str:
    parts = []
    size = adversarial.get("perturbation")
    if size:
        parts.append(f"l-inf {255 * size['linf']:.2f}/255, l2 {size['l2']:.2f}")
    c = adversarial.get("semantic", {})
    for key, name in (("image_cosine", "image cos"), ("image_cosine_reference", "reference image cos"),
                      ("output_similarity", "output similarity")):
        if key in c:
            parts.append(f"{name} {c[key]:.3f}")
    if "clip_score" in c:
        parts.append(f"CLIP score {c['clip_score_clean']:.1f} -> {c['clip_score']:.1f}")
    if "describes_image" in c:
        parts.append("describes the image" if c["describes_image"] else "no longer describes the image")
    return " | ".join(parts)


def image_data_uri(pixels: Any) -> str:
    """(3, H, W) [0, 1] pixels -> a base64 JPEG data URI. JPEG at quality 90 keeps adversarial noise
    visible at a fifth of PNG's size; the exact pixels stay in the run's adversarial/ folder."""
    from PIL import Image

    array = (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def clean_pixels(record: dict[str, Any], size: int, geometry: str) -> Any | None:
    """The clean image as the run's VLM saw it (its `geometry`, data.images.GEOMETRIES), or None when its
    file is gone or unreadable."""
    from vlm_eval.data import load_image
    from vlm_eval.data.images import GEOMETRIES
    from vlm_eval.errors import BadSampleError

    path = Path(record["image"])
    try:
        return GEOMETRIES[geometry](load_image(path, record["id"]), size) if path.is_file() else None
    except BadSampleError as exc:
        log.warning("report: %s", exc)
        return None


def adversarial_pixels(run: RunFolder, sample_id: str) -> Any | None:
    """The adversarial image as evaluated, or None: a --from-adversarial run reads its source's (rounded
    to 8 bits if it did so)."""
    from safetensors.torch import load_file

    from vlm_eval.data.images import quantize_8bit
    from vlm_eval.results import adversarial_file

    attack = run.resolved["attack"] or {}
    transfer = attack.get("name") == "from-adversarial"
    path = adversarial_file(Path(attack["source"]) if transfer else run.folder, sample_id)
    if not path.is_file():
        return None
    pixels = load_file(str(path))["pixels"]
    return quantize_8bit(pixels) if transfer and attack.get("quantize_8bit") else pixels


def cell_for(run: RunFolder, record: dict[str, Any], clean_at: Callable[[int, str], Any]) -> Cell:
    """One run's view of a sample; `clean_at(size, geometry)`: its clean image so (loaded once per sample)."""
    cell = Cell(output=record["raw_output"], score=fmt(record.get("score")))
    adversarial = record.get("adversarial")
    if adversarial is None:
        return cell
    cell.adversarial_output, cell.adversarial_score = adversarial["raw_output"], fmt(adversarial.get("score"))
    targeted = "target_in_output" in adversarial
    cell.target = adversarial.get("target")
    cell.target_label = "target" if targeted else "attacked away from"
    cell.success = bool(adversarial.get("target_in_output"))
    cell.attack = f"attack: {adversarial.get('attack', '')}"
    if adversarial.get("steps") is not None:
        cell.attack += f", {adversarial['steps']} steps, loss {fmt(adversarial.get('loss'), 3)}"
    cell.checks = checks_text(adversarial)
    x_adv = adversarial_pixels(run, record["id"])
    if x_adv is not None:
        cell.adversarial_image = image_data_uri(x_adv)
        clean = clean_at(x_adv.shape[-1], geometry(run))
        if clean is not None:
            cell.perturbation_image, cell.perturbation_caption = perturbation_view(x_adv - clean)
    return cell


def perturbation_view(delta: Any) -> tuple[str | None, str]:
    """The perturbation scaled so that its largest change fills the range (grey = unchanged)."""
    largest = float(delta.abs().max())
    if largest == 0:
        return None, "no perturbation"
    gain = 0.5 / largest
    return image_data_uri(0.5 + gain * delta), f"perturbation x{gain:.0f}"


def geometry(run: RunFolder) -> str:
    """How the run's model cut its images; runs from before it was recorded are LLaVA's."""
    vlm = run.summary["provenance"].get("vlm") or {}
    return vlm.get("geometry", "pad-square")


def sample_view(sample_id: str, runs: list[RunFolder]) -> SampleView:
    run, first = next((run, run.records[sample_id]) for run in runs if sample_id in run.records)
    clean_at = functools.cache(lambda size, geometry: clean_pixels(first, size, geometry))
    clean = clean_at(run.summary["provenance"]["resolution"], geometry(run))
    view = SampleView(sample_id, first.get("question"), list(first.get("references", [])),
                      image_data_uri(clean) if clean is not None else None)
    texts = [sample_id, view.question or "", *view.references]
    for run in runs:
        record = run.records.get(sample_id)
        view.cells.append(cell_for(run, record, clean_at) if record else None)
        if record and "adversarial" in record:
            adversarial = record["adversarial"]
            view.drop = max(view.drop, drop_of(record))
            view.changed |= adversarial["raw_output"] != record["raw_output"]
            view.success |= bool(adversarial.get("target_in_output"))
            view.lost |= adversarial.get("semantic", {}).get("describes_image") is False
            texts += [record["raw_output"], adversarial["raw_output"], adversarial.get("target") or ""]
    view.search = " ".join(texts).lower()
    return view


def drop_of(record: dict[str, Any]) -> float:
    score, attacked = record.get("score"), record["adversarial"].get("score")
    return score - attacked if score is not None and attacked is not None else 0.0


def attacked(runs: list[RunFolder]) -> bool:
    return any("adversarial" in record for run in runs for record in run.records.values())


def ordered_ids(runs: list[RunFolder], max_samples: int) -> tuple[list[str], int]:
    """(the ids to show, at most `max_samples` (0: all): the largest drops first, or in clean runs the lowest
    scores first; how many there are)."""
    ids = list(dict.fromkeys(i for run in runs for i in run.records))
    if attacked(runs):
        drops = {i: max((drop_of(r.records[i]) for r in runs if i in r.records and "adversarial" in r.records[i]),
                        default=0.0) for i in ids}
        ranked = sorted(ids, key=lambda i: -drops[i])
    else:
        lowest = {i: min(r.records[i].get("score") or 0.0 for r in runs if i in r.records) for i in ids}
        ranked = sorted(ids, key=lambda i: lowest[i])
    return (ranked[:max_samples] if max_samples else ranked), len(ids)


def render(runs: list[RunFolder], max_samples: int = DEFAULT_MAX_SAMPLES) -> str:
    """The report page of `runs` as HTML."""
    import jinja2
    from tqdm import tqdm

    ids, total = ordered_ids(runs, max_samples)
    samples = [sample_view(i, runs) for i in tqdm(ids, desc="report", unit="sample")]
    env = jinja2.Environment(loader=jinja2.PackageLoader("vlm_eval", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    views = [{"label": run.label, "headline": headline(run), "meta": run_meta(run), "warning": random_warning(run)}
             for run in runs]
    order = "the largest drop" if attacked(runs) else "the lowest score"
    shown = (f"Showing the {len(ids)} samples with {order} of {total}; --max-samples 0 shows all."
             if len(ids) < total else f"All {total} samples, {order} first.")
    title = "vlm_eval report: " + " vs ".join(run.label for run in runs)
    return env.get_template("report.html.j2").render(title=title, runs=views, samples=samples, shown_note=shown,
                                                     first_order=order)


def random_warning(run: RunFolder) -> str:
    if run.summary["provenance"].get("random_weights"):
        return "Random-weight models: these outputs and scores are meaningless; they only show the pipeline."
    return ""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=program("report"),
                                description="Write a self-contained HTML report of one run, or of several "
                                "side by side (e.g. encoders under the same attack).")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", type=Path)
    p.add_argument("--output", type=Path, help="the HTML file (default RUN_DIR/report.html for one run; "
                   "required for several)")
    p.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES,
                   help="show the samples with the largest drop, at most this many; 0 shows all (default %(default)s)")
    args = p.parse_args(argv)
    if args.output is None and len(args.run_dirs) > 1:
        raise VlmEvalError("a report of several runs needs --output FILE.html")
    output = args.output or args.run_dirs[0] / "report.html"
    html = render([load_run(folder) for folder in args.run_dirs], args.max_samples)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    print(output)
    return 0
