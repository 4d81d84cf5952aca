"""summary.json against its published schema (docs/summary.schema.json)."""

import json
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "summary.schema.json"


def check_summary(run_dir: Path) -> dict:
    """The run's summary, after checking it against the schema (raises jsonschema.ValidationError)."""
    import jsonschema

    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    jsonschema.validate(summary, json.loads(SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)
    return summary
