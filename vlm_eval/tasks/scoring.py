"""Scoring a finished set of records at once: clean, attacked, robust and targeted scores.

Corpus metrics (CIDEr's idf comes from the references of the scored set) are computed over the whole
set, never per batch; each record gets its per-sample score.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Callable

import numpy as np

from vlm_eval.contracts import Record
from vlm_eval.metrics.bootstrap import weighted_means

if TYPE_CHECKING:
    from vlm_eval.attacks.schedule import AttackPlan

# the task's metric: (references by id, outputs by id) -> (corpus metrics, per-sample scores)
Score = Callable[[dict[str, list[str]], dict[str, str]], tuple[dict[str, float], dict[str, float]]]
# the task's per-sample scores under bootstrap resamples: (references, outputs, draws (r, n)) -> (r, n)
ResampledScores = Callable[[dict[str, list[str]], dict[str, str], np.ndarray], np.ndarray]


def score_records(score: Score, metric: str, records: list[Record], attack: AttackPlan | None = None) -> dict[str, float]:
    """Score the whole set at once (CIDEr is corpus-level) and put each sample's score in its record.
    `attack`: the attack that made the records' adversarial outputs (None: a replay of saved images)."""
    if not records:
        return {metric: float("nan")}
    refs = {r["id"]: r["references"] for r in records}
    outputs = {r["id"]: r["output"] for r in records}
    metrics, per_item = score(refs, outputs)
    for record in records:
        record["score"] = per_item[record["id"]]
    if "adversarial" in records[0]:
        targeted = "target_in_output" in records[0]["adversarial"]
        stopped_early = attack is not None and attack.check_every > 0
        metrics.update(score_targeted(score, records, refs, stopped_early) if targeted
                       else score_untargeted(score, records, refs, ensemble=attack is not None and attack.ensemble))
    return metrics


def score_untargeted(score: Score, records: list[Record], refs: dict[str, list[str]], ensemble: bool) -> dict[str, float]:
    """The robust score (the papers' ensemble number) and, for a single attack, the score of the attacked
    outputs alone (what RobustVLM's --attack apgd prints). An ensemble's worst case already counts the
    clean pass, so its attacked score would repeat its robust one."""
    attacked = {f"{name}_attacked": value for name, value in score_attacked(score, records, refs).items()}
    return {**({} if ensemble else attacked), **score_robust(score, records, refs)}


def score_targeted(score: Score, records: list[Record], refs: dict[str, list[str]], stopped_early: bool) -> dict[str, float]:
    """Success rates of a targeted attack (x100) and the task metric of the attacked outputs; with
    `stopped_early` (--check-every), the median steps the successful samples took."""
    metrics = score_attacked(score, records, refs)

    def share(key: str) -> float:
        return 100.0 * sum(r["adversarial"][key] for r in records) / len(records)

    rates = {"target_success_rate": share("target_in_output"), "target_exact_match_rate": share("exact_match")}
    if stopped_early:
        steps = [r["adversarial"]["steps"] for r in records if r["adversarial"]["target_in_output"]]
        rates["target_steps_median"] = float(statistics.median(steps)) if steps else float("nan")
    return {**rates, **{f"{name}_attacked": value for name, value in metrics.items()}}


def score_attacked(score: Score, records: list[Record], refs: dict[str, list[str]]) -> dict[str, float]:
    """Score the attacked outputs as a set; each record's `adversarial.score`, and the corpus metrics."""
    metrics, per_item = score(refs, {r["id"]: r["adversarial"]["output"] for r in records})
    for record in records:
        record["adversarial"]["score"] = per_item[record["id"]]
    return metrics


def score_robust(score: Score, records: list[Record], refs: dict[str, list[str]]) -> dict[str, float]:
    """The robust score: per sample the worst of the clean and the attacked output, scored as a set.

    Per-sample CIDEr depends on the references only (its idf comes from them), so the worst output's
    score does not change when the set is scored again, and robust <= clean holds exactly. Needs the
    records' attacked scores (`score_attacked`).
    """
    worst = {}
    for record in records:
        clean_is_worse = record["score"] <= record["adversarial"]["score"]
        worst[record["id"]] = record["output"] if clean_is_worse else record["adversarial"]["output"]
    metrics, per_item = score(refs, worst)
    for record in records:
        record["score_robust"] = per_item[record["id"]]
    return {f"{name}_robust": value for name, value in metrics.items()}


def resampled_metrics(scores: ResampledScores | None, metric: str, records: list[Record],
                      draws: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics `score_records` reports, under each resample (`draws`, over `records` in order): clean,
    attacked, robust (per sample the worse of the two, chosen again in each resample) and the targeted rates.
    `scores`: the task's per-sample scores under each resample; None: the scores `score_records` put in the
    records, which no resample changes."""
    refs = {r["id"]: r["references"] for r in records}

    def per_sample(outputs: dict[str, str], scored: list[float]) -> np.ndarray:
        return np.array(scored) if scores is None else scores(refs, outputs, draws)

    clean = per_sample({r["id"]: r["output"] for r in records}, [r["score"] for r in records])
    values = {metric: weighted_means(draws, clean)}
    if records and "adversarial" in records[0]:
        attacked = per_sample({r["id"]: r["adversarial"]["output"] for r in records},
                              [r["adversarial"]["score"] for r in records])
        values[f"{metric}_attacked"] = weighted_means(draws, attacked)
        values[f"{metric}_robust"] = weighted_means(draws, np.minimum(clean, attacked))
        for rate, key in (("target_success_rate", "target_in_output"), ("target_exact_match_rate", "exact_match")):
            if key in records[0]["adversarial"]:
                values[rate] = weighted_means(draws, np.array([100.0 * r["adversarial"][key] for r in records]))
    return values
