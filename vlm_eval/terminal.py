"""What a finished run prints in the terminal: a few lines from its summary.json."""

from __future__ import annotations

from pathlib import Path


def summary_table(run_dir: Path) -> str:
    """A few lines for the terminal: what ran, how many samples, the scores."""
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    config, prov = summary["config"], summary["provenance"]
    lines = [
        "",
        f"run folder  {run_dir}",
        f"task        {config['resolved']['task_card']}   samples {summary['n_samples']}   skipped {summary['n_skipped']}"
        + (f"   seed {config['resolved']['seed']}" if "seed" in config["resolved"] else ""),
        f"model       {_model_line(config['resolved'])}   {prov['resolution']} px   {prov['precision']}   {prov['device']}",
    ]
    if summary.get("partial"):
        lines.append(f"PARTIAL     {summary['n_missing']} samples have no record yet: these scores are not the run's")
    defense = prov.get("defense")
    if defense:
        how = f"adaptive, EOT over {defense['eot_samples']}" if defense["adaptive"] else "non-adaptive"
        lines.append(f"defense     {defense['name']}   attacks {how}   tau from {defense['tau_encoder']}")
    width = max(13, *(len(name) + 1 for name in [*summary["metrics"], *summary.get("semantic", {})]))
    intervals = summary.get("intervals", {})
    lines += [f"{name:<{width}} {_metric(value)}{_interval(intervals.get(name))}" for name, value in summary["metrics"].items()]
    if intervals:
        bootstrap = summary["bootstrap"]
        lines.append(f"{'':<{width}} [low, high]: {100 * bootstrap['level']:g} % bootstrap interval over the samples "
                     f"({bootstrap['resamples']} resamples)")
    for name, stats in summary.get("semantic", {}).items():  # docs/semantic.md
        lines.append(f"{name:<{width}} " + "   ".join(f"{k} {v:.4g}" for k, v in stats.items() if v is not None))
    if prov["random_weights"]:
        lines.append("NOTE: random-weight models: these scores are meaningless; they only show the pipeline runs.")
    return "\n".join(lines)


def _model_line(resolved: dict) -> str:
    if resolved["vlm_card"] is None:  # zero-shot classification: the encoder alone
        return f"{resolved['encoder_card']} (zero-shot classifier)"
    return f"{resolved['vlm_card']} + {resolved['encoder_card'] or 'native tower'}"


def _interval(interval: list[float] | None) -> str:
    return "" if interval is None else f"  [{interval[0]:.2f}, {interval[1]:.2f}]"


def _metric(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.2f}"
