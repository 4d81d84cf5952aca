"""Cards: small YAML files that describe encoders, VLMs and tasks (the data, not the code).

Cards live in the top-level folders `encoders/`, `vlms/` and `tasks/` of the repository, of the folder
named by the environment variable VLM_EVAL_HOME, or of an installed wheel's `vlm_eval/home`. A card's file name is its name; `aliases`
adds other names. Loading a card never imports model code.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlm_eval.errors import CardError, UnknownNameError



def default_home() -> Path:
    """Where cards, schedules, recipes and the mini world's files are: $VLM_EVAL_HOME, else the copy an installed
    wheel carries (vlm_eval/home), else the checkout this package runs from. The wheel's copy comes first: next
    to an installed package is site-packages, where another distribution's `tasks/` may lie."""
    if os.environ.get("VLM_EVAL_HOME"):
        return Path(os.environ["VLM_EVAL_HOME"])
    package = Path(__file__).resolve().parent
    return package / "home" if (package / "home").is_dir() else package.parent


CARD_ROOT = default_home()


@dataclass(frozen=True)
class EncoderCard:
    """A CLIP vision encoder and where its weights come from."""

    name: str
    family: str  # module that serves it, e.g. "openclip"
    arch: str  # open_clip model name, e.g. "ViT-L-14-quickgelu"
    source: dict[str, Any]  # {hf_hub, filename, format} | {path, format} | {random: seed}
    description: str = ""
    paper: str = ""
    trained_eps: str | None = None  # the l-inf radius it was fine-tuned for, e.g. "4/255"
    image_size: int = 224
    aliases: tuple[str, ...] = ()
    arch_config: dict[str, Any] | None = None  # open_clip model config for architectures open_clip lacks
    tokenizer: str | None = None  # text tokenizer: a `tokenizers` JSON file (relative to the card) or an open_clip name
    original: str | None = None  # the encoder card it was fine-tuned from (TTC measures tau with that one)
    text_tower: str | None = None  # a vision-only release: the encoder card whose text tower it classifies with
    card_path: str | None = None


@dataclass(frozen=True)
class VlmCard:
    """A vision-language model: the family that serves it and its weights."""

    name: str
    family: str  # e.g. "llava"
    hf_id: str | None = None  # transformers checkpoint; None for random-weight builds
    description: str = ""
    build: dict[str, Any] | None = None  # architecture of a random-weight model (tests, demo)
    path: str | None = None  # a local transformers checkpoint folder, relative to the card (shipped models)
    settings: dict[str, Any] | None = None  # the family's own settings (OpenFlamingo: checkpoint, language model)
    # The semantic checks' models for runs of this VLM (docs/semantic.md): an encoder card with a text
    # tower, and a sentence-transformers hub id or folder ("reference": the reference CLIP's text tower).
    reference_encoder: str = "openai"
    sentence_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    aliases: tuple[str, ...] = ()
    card_path: str | None = None


@dataclass(frozen=True)
class TaskCard:
    """An evaluation task: its data files, reader, prompt and metric."""

    name: str
    type: str  # "captioning" | "vqa" | "zeroshot", or "suite" (its `members` run one by one, then averaged)
    reader: str = ""  # "karpathy" | "vqa" | "imagefolder" | "cifar" | "webdataset" | "folders" (not for suites)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # reader inputs, relative to the data root
    prompt: str = ""  # prompt name understood by the VLM adapter, e.g. "caption", "vqa" (not used by zeroshot)
    description: str = ""
    split: str = "test"
    image_file: str | None = None  # template from an annotation to an image file name
    obtain: str = ""  # how to get the data, shown when it is missing
    max_new_tokens: int = 20
    data_root: str | None = None  # a task's own root (bundled data); else --data-root
    generator: str | None = None  # a world that writes the data on demand (e.g. "miniworld"); else it is downloaded
    templates: tuple[str, ...] = ()  # zero-shot prompt templates, e.g. "a photo of a {}."
    # --attack ensemble: a sample scoring under this is broken and leaves the schedule (RobustVLM: CIDEr 10
    # on COCO, 2 on Flickr30k, VQA accuracy 0); a schedule's own stop_below overrides it
    stop_below: float | None = None
    answer_comma_cut: bool = True  # --postprocess openflamingo cuts answers at ", " (its OK-VQA clean-up does not)
    aliases: tuple[str, ...] = ()
    members: tuple[str, ...] = ()  # a suite's task cards
    # where in-context demonstrations come from (VLMs that take them): {split: train, files: {KEY: PATH or null}}
    demonstrations: dict[str, Any] | None = None
    card_path: str | None = None


CARD_TYPES = {"encoders": EncoderCard, "vlms": VlmCard, "tasks": TaskCard}


def card_relative(card: Any, value: str) -> Path:
    """A path named in a card: absolute as given, else relative to the card's folder."""
    path = Path(value).expanduser()
    if path.is_absolute() or card.card_path is None:
        return path
    return (Path(card.card_path).parent / path).resolve()


def card_dir(kind: str) -> Path:
    path = CARD_ROOT / kind
    if not path.is_dir():
        raise CardError(
            f"no card folder {path}: vlm_eval reads its cards from its repository checkout; install it with "
            "`pip install -e <checkout>` (as `make install` does) or set VLM_EVAL_HOME to the checkout"
        )
    return path


def parse_card(kind: str, path: Path) -> Any:
    """Read one card file into its dataclass, with errors that name the file and the field."""
    cls = CARD_TYPES[kind]
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CardError(f"cannot read card {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CardError(f"card {path} must be a YAML mapping")
    raw.setdefault("name", path.stem)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - (known - {"card_path"}))
    if unknown:
        raise CardError(f"card {path}: unknown field(s) {unknown}; allowed: {sorted(known - {'card_path'})}")
    for key in ("aliases", "templates", "members"):
        if key in raw:
            if not isinstance(raw[key], list):
                raise CardError(f"card {path}: field {key!r} must be a list, got {raw[key]!r}")
            raw[key] = tuple(raw[key])
    raw["card_path"] = str(path)
    try:
        card = cls(**raw)
    except TypeError as exc:
        raise CardError(f"card {path}: {exc}") from exc
    _check_types(card, path)
    if kind == "tasks":
        _check_task(card, path)
    return card


def _check_task(card: TaskCard, path: Path) -> None:
    suite = card.type == "suite"
    if suite != bool(card.members) or (not suite and not card.reader):
        raise CardError(f"card {path}: a task card names a `reader` and its `files`; a suite (type: suite) "
                        "names its `members` instead")


def _check_types(card: Any, path: Path) -> None:
    """Each field holds the kind of value its annotation names (str, int, mapping, list)."""
    kinds = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "tuple": tuple}
    for f in dataclasses.fields(card):
        value = getattr(card, f.name)
        annotation = str(f.type)
        if value is None and "None" in annotation:
            continue
        kind = annotation.split("[")[0].split(" ")[0]
        if not isinstance(value, kinds[kind]) or (kind != "bool" and isinstance(value, bool)):
            raise CardError(f"card {path}: field {f.name!r} must be a {kind}, got {value!r}")


def all_cards(kind: str) -> dict[str, Any]:
    """Every card of a kind, keyed by name."""
    return {p.stem: parse_card(kind, p) for p in sorted(card_dir(kind).glob("*.yaml"))}


def aliases(kind: str) -> dict[str, str]:
    """alias -> card name, for every alias of every card of a kind."""
    table: dict[str, str] = {}
    for name, card in all_cards(kind).items():
        for alias in card.aliases:
            if alias in table:
                raise CardError(f"alias {alias!r} is claimed by both {table[alias]} and {name}")
            table[alias] = name
    return table


def load_card(kind: str, name: str) -> Any:
    """The card called `name` (or aliased so) among `kind` ("encoders", "vlms", "tasks")."""
    name = aliases(kind).get(name, name)
    path = card_dir(kind) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(all_cards(kind)) + sorted(aliases(kind))
        singular = kind.rstrip("s")
        raise UnknownNameError(f"unknown {singular} {name!r}; known: {', '.join(known)}")
    return parse_card(kind, path)
