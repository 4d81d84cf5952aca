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
from typing import TYPE_CHECKING, Any, Callable

from vlm_eval.cards import EncoderCard
from vlm_eval.encoders.weights import (  # noqa: F401  (encoder_card_from_spec, weights_status: the family's API)
    DEFAULT_ARCH,
    FAMILY_NAME,
    encoder_card_from_spec,
    random_seed,
    resolve_checkpoint,
    weights_status,
)
from vlm_eval.errors import CardError, CheckpointError
from vlm_eval.results import file_sha256

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import CLIPVisionModel

    from vlm_eval.contracts import Classifier, Json, ReferenceEncoder

log = logging.getLogger(__name__)

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

    def hf_vision_model(self) -> CLIPVisionModel:
        """The tower as transformers' `CLIPVisionModel`, the form HF VLMs (LLaVA) take a vision tower in."""
        from vlm_eval.encoders.convert import to_hf_vision_model

        return to_hf_vision_model(self.visual)


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

    if card.family != FAMILY_NAME:
        raise CardError(f"encoder {card.name} is of family {card.family!r}, not {FAMILY_NAME!r}")
    path = resolve_checkpoint(card, weights_dir, allow_download)
    if path is None:
        torch.manual_seed(random_seed(card))
        return build().float().eval().requires_grad_(False), None, None
    fmt = card.source.get("format", "auto")
    log.info("encoder %s: loading %s (format %s)", card.name, path, fmt)
    try:
        state_dict = extract(checkpoints.read_state_dict(path), fmt)
    except CheckpointError as exc:
        raise CheckpointError(f"encoder {card.name}: {path}: {exc}" + (f"\n{help_text}" if help_text else "")) from exc
    checkpoints.require_finite(state_dict.items(), f"{path} (encoder {card.name})")
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


class OpenClipFamily:
    """The `EncoderFamily` of open_clip models: every access the toolkit makes to an encoder goes here."""

    def card_from_spec(self, spec: str, arch: str | None = None) -> EncoderCard | None:
        return encoder_card_from_spec(spec, arch or DEFAULT_ARCH)

    def resolve_checkpoint(self, card: EncoderCard, weights_dir: Path | None, allow_download: bool) -> Path | None:
        return resolve_checkpoint(card, weights_dir, allow_download)

    def weights_status(self, card: EncoderCard, weights_dir: Path | None) -> tuple[bool, str]:
        return weights_status(card, weights_dir)

    def tokenizer_file(self, card: EncoderCard) -> Path | None:
        from vlm_eval.encoders.text import tokenizer_file

        return tokenizer_file(card)

    def load_vision(self, card: EncoderCard, weights_dir: Path | None, allow_download: bool) -> LoadedEncoder:
        return load_openclip_encoder(card, weights_dir, allow_download)

    def load_clip(self, card: EncoderCard, weights_dir: Path | None,
                  allow_download: bool) -> tuple[nn.Module, Callable[[list[str]], torch.Tensor], dict[str, Json]]:
        """(the whole CLIP in fp32, its text tokenizer, provenance): what fine-tuning starts from."""
        from vlm_eval.encoders.text import load_text_tokenizer

        tokenize = load_text_tokenizer(card)
        loaded = load_openclip_clip(card, weights_dir, allow_download)
        return loaded.model, tokenize, {"name": card.name, "checkpoint": loaded.checkpoint, "sha256": loaded.sha256}

    def load_classifier(self, card: EncoderCard, class_names: list[str], templates: list[str],
                        weights_dir: Path | None, allow_download: bool, device: str,
                        dtype: torch.dtype) -> tuple[Classifier, dict[str, Json]]:
        """The zero-shot classifier over `class_names`, and its provenance (checkpoint, tokenizer, hashes)."""
        from vlm_eval.encoders.zeroshot import load_zeroshot_classifier

        classifier, loaded = load_zeroshot_classifier(card, class_names, templates, weights_dir, allow_download,
                                                      device, dtype)
        tokenizer = self.tokenizer_file(loaded.card)  # a vision-only release's: its text tower card's
        return classifier, {"name": card.name, "checkpoint": loaded.checkpoint, "sha256": loaded.sha256,
                            "text_tower": card.text_tower, "tokenizer": loaded.card.tokenizer,
                            "tokenizer_sha256": tokenizer and file_sha256(tokenizer)}

    def load_reference(self, card: EncoderCard, weights_dir: Path | None, allow_download: bool,
                       device: str) -> tuple[ReferenceEncoder, dict[str, Json]]:
        from vlm_eval.encoders.reference import ReferenceClip

        reference, loaded = ReferenceClip.load(card, weights_dir, allow_download, device)
        return reference, {"name": loaded.card.name, "checkpoint": loaded.checkpoint, "sha256": loaded.sha256}


FAMILY = OpenClipFamily()
