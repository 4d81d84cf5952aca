"""The files a run's shards share in its folder: written once, appended per shard, read as one.

    config.json, subset_ids.txt   written once, by whichever shard comes first; a shard with another
                                  config or subset is refused
    shards/<tag>.jsonl            the records one shard made, appended batch by batch
    shards/<tag>.skipped.jsonl    the samples it could not evaluate, with the reason
    shards/<tag>.provenance.json  what it loaded (the summary's provenance)
    claims/                       who evaluates which batch (run.claims); gone once merged
    attack_states/                the attack snapshots of interrupted batches; gone once merged

The union of the shard files is the run's progress: whichever process resumes, with however many
shards, evaluates only the samples it lacks.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vlm_eval import results
from vlm_eval.contracts import Json, Record
from vlm_eval.data.samples import Sample
from vlm_eval.errors import VlmEvalError

log = logging.getLogger(__name__)

SHARDS = "shards"
CONFIG, SUBSET, SUMMARY = "config.json", "subset_ids.txt", "summary.json"


def records_file(run_dir: Path, tag: str) -> Path:
    return Path(run_dir) / SHARDS / f"{tag}.jsonl"


def skipped_file(run_dir: Path, tag: str) -> Path:
    return Path(run_dir) / SHARDS / f"{tag}.skipped.jsonl"


def start_or_join(run_dir: Path, config: dict[str, Json], samples: list[Sample]) -> None:
    """Write config.json and subset_ids.txt if no shard has, else check that this shard's are theirs."""
    try:
        (Path(run_dir) / SHARDS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VlmEvalError(f"cannot create the run folder {run_dir}: {exc.strerror}; choose another --output-dir") from exc
    ids = "".join(f"{s.id}\n" for s in samples)
    if not results.create_once(Path(run_dir) / SUBSET, ids) and (Path(run_dir) / SUBSET).read_text() != ids:
        raise VlmEvalError(f"{run_dir}: the task's samples are not those the run started with ({SUBSET}): its data, "
                           "--n-samples or --seed differ; start a new run in another folder")
    if not results.create_once(Path(run_dir) / CONFIG, json.dumps(config, indent=2) + "\n"):
        check_same_config(run_dir, config)


def check_same_config(run_dir: Path, config: dict[str, Json]) -> None:
    """Refuse a shard whose configuration is not the one config.json holds, naming what differs."""
    differ = config_differences(json.loads((Path(run_dir) / CONFIG).read_text()), config)
    if differ:
        raise VlmEvalError(f"{run_dir} holds a run with another configuration ({'; '.join(differ)}); a shard joins "
                           "only the run it belongs to: give every shard the same options, or another --output-dir")


def check_run_dir(run_dir: Path, mode: str) -> None:
    """Never overwrite outputs. `mode`: "new" needs a free folder; "join" (a shard of several) a free one or
    its siblings' unfinished run; "resume" an unfinished run."""
    if merged(run_dir):
        raise VlmEvalError(f"{run_dir} holds a finished run (summary.json): nothing to resume" if mode == "resume"
                           else f"{run_dir} already holds a finished run (summary.json); choose another --output-dir")
    started = (run_dir / "subset_ids.txt").is_file()
    if mode == "resume" and not started:
        raise VlmEvalError(f"{run_dir} has no subset_ids.txt: the run stopped before it started; start it again")
    if mode == "new":
        for name, state in (("samples.jsonl", "the outputs of an interrupted run"), (SHARDS, "the outputs of an interrupted run"),
                            ("subset_ids.txt", "an interrupted run")):
            if (run_dir / name).exists():
                raise VlmEvalError(f"{run_dir} already holds {state} ({name}); choose another --output-dir (to "
                                   f"finish it: python -m vlm_eval resume {run_dir})")


def config_differences(saved: dict[str, Json], mine: dict[str, Json]) -> list[str]:
    """'key: saved there, mine here' for each setting that differs, a resolved choice counting instead of
    the option that asked for it (`resume` pins the choices made). Shards may name the folder differently
    and sit on different devices of one kind (cuda:0, cuda:1): nothing else may differ."""
    def settings(config: dict[str, Json]) -> dict[str, Json]:
        resolved = {k: v for k, v in config.get("resolved", {}).items() if k != "device"}
        given = {k: v for k, v in config.items() if k not in (*resolved, "resolved", "output_dir", "device")}
        return given | {f"resolved.{k}": v for k, v in resolved.items()}

    ours, theirs = settings(mine), settings(saved)
    return [f"{key}: {theirs.get(key)!r} there, {ours.get(key)!r} here"
            for key in sorted(ours.keys() | theirs.keys()) if ours.get(key) != theirs.get(key)]


def subset_ids(run_dir: Path) -> list[str]:
    return (Path(run_dir) / SUBSET).read_text().split()


def write_provenance(run_dir: Path, tag: str, provenance: dict[str, Json]) -> None:
    results.write_json(Path(run_dir) / SHARDS / f"{tag}.provenance.json", provenance)


def read_provenance(run_dir: Path) -> dict[str, Json]:
    """The provenance of the run's first shard (by tag): every shard loaded the same cards and weights."""
    files = sorted((Path(run_dir) / SHARDS).glob("*.provenance.json"))
    if not files:
        raise VlmEvalError(f"{run_dir}: no shard has started ({SHARDS}/*.provenance.json missing); nothing to merge")
    return json.loads(files[0].read_text())


def drop_cut_line(path: Path) -> None:
    """Before a shard appends to its file again: drop a last line a kill cut off, so that no new line follows it."""
    records, cut = results.read_jsonl(path)
    if cut:
        log.warning("dropping the last line of %s: the interruption cut it off", path)
        results.replace_jsonl(path, records)


class Progress:
    """The samples every shard has finished (evaluated or skipped), read incrementally from their files;
    a line still being written (or cut off by a kill) counts once it is whole."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / SHARDS
        self.read_to: dict[Path, int] = {}
        self.done: set[str] = set()

    def update(self) -> set[str]:
        for path in sorted(self.dir.glob("*.jsonl")):
            start = self.read_to.get(path, 0)
            with path.open("rb") as f:
                f.seek(start)
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            for number, line in enumerate(whole.splitlines()):
                try:
                    self.done.add(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise VlmEvalError(f"{path}: a damaged line after byte {start} (line {number + 1} of the new "
                                       "ones); the run folder is damaged") from None
            self.read_to[path] = start + len(whole)
        return self.done


def gather(run_dir: Path) -> tuple[dict[str, Record], dict[str, dict[str, str]]]:
    """(records by id, skipped samples by id) over every shard's files; a duplicated id keeps its first
    record, a cut last line (a shard killed mid-write) is left out."""
    records: dict[str, Record] = {}
    skipped: dict[str, dict[str, str]] = {}
    for path in sorted((Path(run_dir) / SHARDS).glob("*.jsonl")):
        rows, _ = results.read_jsonl(path)
        into = skipped if path.name.endswith(".skipped.jsonl") else records
        for row in rows:
            into.setdefault(str(row["id"]), row)
    return records, skipped


def merged(run_dir: Path) -> bool:
    """Whether the run folder holds its final summary (not a --partial one)."""
    path = Path(run_dir) / SUMMARY
    return path.is_file() and not json.loads(path.read_text()).get("partial", False)
