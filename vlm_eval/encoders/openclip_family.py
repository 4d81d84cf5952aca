"""The "openclip" encoder family: open_clip ViT vision towers with weights named by a card.

A card's `source` says where the weights come from:

* `{random: <seed>}`: seeded random initialisation, no file (tests, demo);
* `{path: <file>, format: <fmt>}`: a local checkpoint, relative to the card's folder or absolute;
* `{hf_hub: <repo>, filenames: [...], format: <fmt>}`: a file of a HF hub repo, looked up in
  `--weights-dir` and then in the local HF cache; downloaded only when explicitly allowed.

`load_openclip_encoder` builds the vision tower only (what a VLM needs); `load_openclip_clip` builds
the whole CLIP, text tower and `logit_scale` included (what zero-shot classification needs).

This module imports neither torch nor open_clip at import time, so that `weights_status` (used by the
`list` command) stays cheap; building and loading import them on demand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm_eval.cards import EncoderCard, card_relative
from vlm_eval.errors import CardError, CheckpointError, MissingResourceError
from vlm_eval.results import file_sha256

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

FAMILY = "openclip"
DEFAULT_ARCH = "ViT-L-14-quickgelu"
# What open_clip itself looks for in a hub repo, safetensors first (open_clip/constants.py).
OPEN_CLIP_HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_HUB_PREFIX = "hf-hub:"
LAYOUTS_HELP = (
    "Accepted layouts: raw_visual (keys conv1.weight, transformer.resblocks.N.*), "
    "vision_encoder_state_dict ({'vision_encoder_state_dict': <raw visual>}), open_clip_full (keys visual.*). "
    "A checkpoint of another architecture needs --encoder-arch (an open_clip model name)."
)


@dataclass
class LoadedEncoder:
    """An open_clip vision tower ready for evaluation, with the provenance recorded in results.

    Attributes:
        visual: the open_clip `VisionTransformer`; fp32, eval mode, parameters without gradients.
        card: the card it was built from.
        checkpoint: the weights file, or None for a random init.
        sha256: hex SHA-256 of `checkpoint`, or None.
        quick_gelu: whether the tower uses QuickGELU (OpenAI CLIP and its fine-tunes do).
        image_size: input resolution in pixels.
    """

    visual: nn.Module
    card: EncoderCard
    checkpoint: str | None
    sha256: str | None
    quick_gelu: bool
    image_size: int


def load_openclip_encoder(
    card: EncoderCard, weights_dir: Path | None = None, allow_download: bool = False
) -> LoadedEncoder:
    """Build the card's vision tower and load its weights; nothing is downloaded unless allowed.

    Args:
        card: an encoder card of family "openclip".
        weights_dir: a folder searched for hub files before the HF cache (`--weights-dir`).
        allow_download: fetch a missing hub file instead of failing.

    Raises:
        CardError: malformed `source` or unknown architecture.
        MissingResourceError: the weights file is not found (the message says how to get it).
        CheckpointError: the file is unreadable or does not fit the architecture.
    """
    from vlm_eval.encoders.checkpoints import extract_visual_state_dict

    config = model_config(card)
    visual, path, digest = _load(card, lambda: _build_visual(config), extract_visual_state_dict,
                                 weights_dir, allow_download, help_text=LAYOUTS_HELP)
    return LoadedEncoder(
        visual=visual,
        card=card,
        checkpoint=None if path is None else str(path),
        sha256=digest,
        quick_gelu=bool(config.get("quick_gelu", False)),
        image_size=_image_size(config),
    )


@dataclass
class LoadedClip:
    """A whole open_clip CLIP (vision and text towers, `logit_scale`), with its provenance.

    Attributes:
        model: the open_clip `CLIP`; fp32, eval mode, parameters without gradients.
        card: the card it was built from.
        checkpoint: the weights file, or None for a random init.
        sha256: hex SHA-256 of `checkpoint`, or None.
        image_size: input resolution in pixels.
        context_length: the text tower's number of token positions.
    """

    model: nn.Module
    card: EncoderCard
    checkpoint: str | None
    sha256: str | None
    image_size: int
    context_length: int


def load_openclip_clip(card: EncoderCard, weights_dir: Path | None = None, allow_download: bool = False) -> LoadedClip:
    """Build the card's whole CLIP and load its weights (strictly); nothing is downloaded unless allowed.

    The weights are found as for `load_openclip_encoder`, but only an `open_clip_full` checkpoint
    fits: a vision-only one (raw_visual, vision_encoder_state_dict) lacks the text tower.

    Raises:
        CardError: malformed `source`, unknown architecture, or an architecture without `text_cfg`.
        MissingResourceError: the weights file is not found (the message says how to get it).
        CheckpointError: the file is unreadable, holds only a vision tower, or does not fit.
    """
    from vlm_eval.encoders.checkpoints import extract_clip_state_dict

    config = clip_config(card)
    model, path, digest = _load(card, lambda: _build_clip(card, config), extract_clip_state_dict,
                                weights_dir, allow_download)
    return LoadedClip(model=model, card=card, checkpoint=None if path is None else str(path), sha256=digest,
                      image_size=_image_size(config), context_length=int(model.context_length))


def clip_config(card: EncoderCard) -> dict[str, Any]:
    """`model_config` of a card, checked to describe a whole open_clip `CLIP` (with its text tower).

    Raises:
        CardError: no `text_cfg`, or a model open_clip builds as another class (custom text tower, CoCa).
    """
    config = model_config(card)
    if "text_cfg" not in config:
        raise CardError(f"encoder {card.name}: the model config has no `text_cfg`; zero-shot classification "
                        "needs the text tower's architecture (add text_cfg to arch_config)")
    other = [key for key in ("custom_text", "multimodal_cfg") if config.get(key)]
    if other:
        raise CardError(f"encoder {card.name}: {card.arch!r} is not a plain open_clip CLIP ({other[0]} is set); "
                        "zero-shot classification supports CLIP models with open_clip's own text tower")
    return config


def build_visual(card: EncoderCard) -> nn.Module:
    """The card's vision tower with open_clip's random init (no weights, no download)."""
    return _build_visual(model_config(card))


def model_config(card: EncoderCard) -> dict[str, Any]:
    """The open_clip model config of a card: its `arch_config`, else open_clip's built-in `arch`.

    Raises:
        CardError: `arch` is not a built-in open_clip model (and no `arch_config` is given), or the
            card's `image_size` disagrees with the architecture.
    """
    if card.arch_config is not None:
        config = dict(card.arch_config)
    else:
        if ":" in card.arch:  # "hf-hub:..." / "local-dir:..." would make open_clip fetch a config
            raise CardError(f"encoder {card.name}: arch {card.arch!r} is not a built-in open_clip model; "
                            "give the model config as `arch_config`")
        import open_clip

        config = open_clip.get_model_config(card.arch)
        if config is None:
            raise CardError(f"encoder {card.name}: unknown open_clip arch {card.arch!r} "
                            "(see open_clip.list_models()), or give `arch_config`")
    if "vision_cfg" not in config or "embed_dim" not in config:
        raise CardError(f"encoder {card.name}: arch_config needs `embed_dim` and `vision_cfg`")
    if _image_size(config) != card.image_size:
        raise CardError(f"encoder {card.name}: image_size {card.image_size} but the architecture "
                        f"takes {_image_size(config)} px")
    return config


def resolve_checkpoint(card: EncoderCard, weights_dir: Path | None = None, allow_download: bool = False) -> Path | None:
    """The local weights file of a card (None for `random`), fetching it only if `allow_download`.

    Raises:
        CardError: the card's `source` is malformed.
        MissingResourceError: not found; names every place searched and how to get the file.
    """
    kind = _source_kind(card)
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
        kind = _source_kind(card)
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
        spec: a path to an existing checkpoint file, or `hf-hub:org/name` (an open_clip hub repo).
        arch: the open_clip architecture the weights are for.
    """
    if spec.startswith(HF_HUB_PREFIX):
        repo = spec[len(HF_HUB_PREFIX):].strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise CardError(f"encoder {spec!r}: expected hf-hub:<org>/<name>")
        source = {"hf_hub": repo, "filenames": list(OPEN_CLIP_HUB_FILENAMES), "format": "open_clip_full"}
        return EncoderCard(name=spec, family=FAMILY, arch=arch, source=source, tokenizer=arch,
                           description=f"open_clip weights from the HF hub repo {repo}")
    path = Path(spec).expanduser()
    if path.is_file():
        path = path.resolve()
        return EncoderCard(name=path.stem, family=FAMILY, arch=arch, tokenizer=arch,
                           source={"path": str(path), "format": "auto"},
                           description=f"local checkpoint {path}")
    return None


def _build_visual(config: dict[str, Any]) -> nn.Module:
    """Only the vision tower of an open_clip config (the text tower would be ~120M wasted params)."""
    import open_clip

    try:
        from open_clip.model import _build_vision_tower
    except ImportError:  # private helper; fall back to building the whole CLIP
        return open_clip.CLIP(**config).visual
    try:
        return _build_vision_tower(config["embed_dim"], config["vision_cfg"], bool(config.get("quick_gelu", False)))
    except TypeError as exc:
        raise CardError(f"invalid open_clip vision_cfg {config['vision_cfg']}: {exc}") from exc


def _load(card: EncoderCard, build: Any, extract: Any, weights_dir: Path | None, allow_download: bool,
          help_text: str = "") -> tuple[nn.Module, Path | None, str | None]:
    """(module, checkpoint, sha256): `build()` with the card's weights loaded strictly, or seeded at random.

    Args:
        build: makes the module (vision tower or whole CLIP) from the card's architecture.
        extract: `checkpoints.extract_*_state_dict`, the checkpoint's part that fits the module.
        help_text: appended to a checkpoint error (the layouts accepted).
    """
    import torch

    from vlm_eval.encoders import checkpoints

    if card.family != FAMILY:
        raise CardError(f"encoder {card.name} is of family {card.family!r}, not {FAMILY!r}")
    path = resolve_checkpoint(card, weights_dir, allow_download)
    if path is None:
        torch.manual_seed(_seed(card))
        return build().float().eval().requires_grad_(False), None, None
    fmt = card.source.get("format", "auto")
    log.info("encoder %s: loading %s (format %s)", card.name, path, fmt)
    try:
        state_dict = extract(checkpoints.read_state_dict(path), fmt)
    except CheckpointError as exc:
        raise CheckpointError(f"encoder {card.name}: {path}: {exc}" + (f"\n{help_text}" if help_text else "")) from exc
    with torch.device("meta"):  # no random init of weights that are replaced at once
        module = build()
    checkpoints.load_weights_strict(module, state_dict, source=f"{path} (encoder {card.name})")
    _rebuild_causal_mask(module)
    _assert_materialized(module, path)
    return module.float().eval().requires_grad_(False), path, file_sha256(path)


def _build_clip(card: EncoderCard, config: dict[str, Any]) -> nn.Module:
    import open_clip

    kwargs = {k: v for k, v in config.items() if k != "custom_text"}  # clip_config refused a true value
    try:
        return open_clip.CLIP(**kwargs)
    except TypeError as exc:
        raise CardError(f"encoder {card.name}: the model config does not build an open_clip CLIP: {exc}") from exc


def _rebuild_causal_mask(model: nn.Module) -> None:
    """Recompute the text tower's causal mask, a non-persistent buffer left empty by a meta-device build.

    It is what open_clip builds: -inf above the diagonal, 0 elsewhere (a token attends to itself
    and to the tokens before it).
    """
    import torch

    mask = getattr(model, "attn_mask", None)
    if mask is not None and mask.is_meta:
        model.attn_mask = torch.full(tuple(mask.shape), float("-inf")).triu_(1)


def _seed(card: EncoderCard) -> int:
    try:
        return int(card.source["random"])
    except (TypeError, ValueError) as exc:
        raise CardError(f"encoder {card.name}: `source.random` must be an integer seed") from exc


def _assert_materialized(visual: nn.Module, path: Path) -> None:
    """A tower built on the meta device must have received every tensor from the checkpoint."""
    left = [n for n, t in [*visual.named_parameters(), *visual.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"checkpoint {path} left tensors without values: {left[:10]}")


def _image_size(config: dict[str, Any]) -> int:
    size = config["vision_cfg"].get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise CardError(f"non-square image_size {size} is not supported")
        size = size[0]
    return int(size)


def _source_kind(card: EncoderCard) -> str:
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
