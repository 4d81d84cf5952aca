"""Where an encoder card's weights are: a local file, `--weights-dir`, the HF cache, or (when allowed) the hub.

Imports neither torch nor open_clip, so that `list` stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vlm_eval.cards import EncoderCard, card_relative
from vlm_eval.errors import CardError, MissingResourceError

log = logging.getLogger(__name__)

FAMILY_NAME = "openclip"
DEFAULT_ARCH = "ViT-L-14-quickgelu"
# What open_clip itself looks for in a hub repo, safetensors first (open_clip/constants.py).
OPEN_CLIP_HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_HUB_PREFIX = "hf-hub:"
RUN_CARD = "encoder.yaml"  # the card `python -m vlm_eval finetune` writes into its run folder


def resolve_checkpoint(card: EncoderCard, weights_dir: Path | None = None, allow_download: bool = False) -> Path | None:
    """The local weights file of a card (None for `random`), fetching it only if `allow_download`.

    Raises:
        CardError: the card's `source` is malformed.
        MissingResourceError: not found; names every place searched and how to get the file.
    """
    kind = source_kind(card)
    if kind == "random":
        return None
    if kind == "path":
        path = card_relative(card, card.source["path"])
        if not path.is_file():
            raise MissingResourceError(_missing_message(card, [str(path)], get=None))
        return path
    repo, filenames = card.source["hf_hub"], _hub_filenames(card)
    for candidate in _weights_dir_candidates(repo, filenames, weights_dir):
        if candidate.is_file():
            return candidate
    path, error = _from_hub_cache(repo, filenames, allow_download)
    if path is None:
        searched = [str(p) for p in _weights_dir_candidates(repo, filenames, weights_dir)]
        searched.append(f"HF hub cache {_hub_cache_dir()} ({repo}: {', '.join(filenames)})")
        raise MissingResourceError(_missing_message(card, searched, get=(repo, filenames[0]), error=error))
    return path


def weights_status(card: EncoderCard, weights_dir: Path | None = None) -> tuple[bool, str]:
    """Whether a card's weights are present locally, and where (or what is missing).

    Cheap: imports neither torch nor open_clip and never touches the network.
    """
    try:
        kind = source_kind(card)
    except CardError as exc:
        return False, str(exc)
    if kind == "random":
        return True, f"random init (seed {card.source['random']})"
    if kind == "path":
        path = card_relative(card, card.source["path"])
        return (True, str(path)) if path.is_file() else (False, f"missing {path}")
    repo, filenames = card.source["hf_hub"], _hub_filenames(card)
    for candidate in _weights_dir_candidates(repo, filenames, weights_dir):
        if candidate.is_file():
            return True, str(candidate)
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):  # else None (unknown) or a "known not to exist" sentinel
            return True, cached
    return False, f"missing: {repo} ({' or '.join(filenames)}); get it with: hf download {repo} {filenames[0]}"


def encoder_card_from_spec(spec: str, arch: str = DEFAULT_ARCH) -> EncoderCard | None:
    """An ad-hoc card for an `--encoder` value that is a checkpoint file or `hf-hub:org/name`.

    Returns None for anything else, so that the caller looks the value up among the cards. The
    tokenizer (used by zero-shot classification only) is open_clip's for `arch`.

    Args:
        spec: a path to an existing checkpoint file, a `finetune` run folder (its encoder.yaml), or
            `hf-hub:org/name` (an open_clip hub repo).
        arch: the open_clip architecture the weights are for.
    """
    if spec.startswith(HF_HUB_PREFIX):
        repo = spec[len(HF_HUB_PREFIX):].strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise CardError(f"encoder {spec!r}: expected hf-hub:<org>/<name>")
        source = {"hf_hub": repo, "filenames": list(OPEN_CLIP_HUB_FILENAMES), "format": "open_clip_full"}
        return EncoderCard(name=spec, family=FAMILY_NAME, arch=arch, source=source, tokenizer=arch,
                           description=f"open_clip weights from the HF hub repo {repo}")
    path = Path(spec).expanduser()
    if path.is_dir() and (path / RUN_CARD).is_file():  # a fine-tuning run folder: its exported card
        from vlm_eval.cards import parse_card

        return parse_card("encoders", path / RUN_CARD)
    if path.is_file():
        path = path.resolve()
        return EncoderCard(name=path.stem, family=FAMILY_NAME, arch=arch, tokenizer=arch,
                           source={"path": str(path), "format": "auto"},
                           description=f"local checkpoint {path}")
    return None


def random_seed(card: EncoderCard) -> int:
    try:
        return int(card.source["random"])
    except (TypeError, ValueError) as exc:
        raise CardError(f"encoder {card.name}: `source.random` must be an integer seed") from exc


def source_kind(card: EncoderCard) -> str:
    source = card.source if isinstance(card.source, dict) else {}
    kinds = [k for k in ("random", "path", "hf_hub") if k in source]
    if len(kinds) != 1:
        raise CardError(f"encoder {card.name}: `source` needs exactly one of random, path, hf_hub; got {card.source!r}")
    return kinds[0]


def _hub_filenames(card: EncoderCard) -> list[str]:
    names = card.source.get("filenames") or card.source.get("filename")
    names = [names] if isinstance(names, str) else list(names or [])
    if not names:
        raise CardError(f"encoder {card.name}: an hf_hub source needs `filenames`")
    return names


def _weights_dir_candidates(repo: str, filenames: list[str], weights_dir: Path | None) -> list[Path]:
    if weights_dir is None:
        return []
    weights_dir = Path(weights_dir).expanduser()
    per_repo = weights_dir / repo.replace("/", "--")
    return [folder / name for name in filenames for folder in (per_repo, weights_dir)]


def _from_hub_cache(repo: str, filenames: list[str], allow_download: bool) -> tuple[Path | None, str | None]:
    """First of `filenames` found in the HF cache (or downloaded), with the last error otherwise."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    error = None
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=not allow_download)), None
        except (EntryNotFoundError, OSError, ValueError) as exc:  # not cached / not in repo / offline
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            log.debug("hub lookup %s/%s failed: %s", repo, filename, error)
    return None, error


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _missing_message(
    card: EncoderCard, searched: list[str], get: tuple[str, str] | None, error: str | None = None
) -> str:
    lines = [f"weights of encoder {card.name!r} not found. Looked in:"]
    lines += [f"  - {place}" for place in searched]
    if error:
        lines.append(f"Last hub error: {error}")
    if get is not None:
        repo, filename = get
        lines.append(f"Get them with: hf download {repo} {filename}  (or rerun with --allow-download)")
    alternatives = card.source.get("alternatives")
    if alternatives:
        lines.append(f"Alternatively: {alternatives}")
    return "\n".join(lines)
