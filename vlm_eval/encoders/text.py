"""Text tokenizers of encoder cards: texts -> the token tensor an open_clip text tower reads.

An encoder card's `tokenizer` is either

* a HF `tokenizers` JSON file (`*.json`, relative to the card's folder or absolute) whose
  post-processor adds the start and end tokens, or
* an open_clip model name (e.g. "ViT-L-14"), served by `open_clip.get_tokenizer` (CLIP's BPE, shipped
  with open_clip, so it works offline).

Either way the result is a `(N, context_length)` LongTensor padded with 0 that ends every text with
the end token, also when it had to be truncated, as open_clip's tokenizer does. open_clip's text
tower pools by default (`pool_type='argmax'`) at the position of the HIGHEST token id, so the end
token must have the highest id of the vocabulary (CLIP's `<end_of_text>` is 49407); a JSON
tokenizer that breaks this is refused, since the text embeddings would silently be read elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vlm_eval.cards import EncoderCard, card_relative
from vlm_eval.errors import CardError, MissingResourceError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], "torch.Tensor"]  # texts -> LongTensor (N, context_length)
PAD_ID = 0  # open_clip pads with 0; the mini world's tokenizer has <pad> = 0 too
DEFAULT_CONTEXT_LENGTH = 77


def load_text_tokenizer(card: EncoderCard) -> Tokenize:
    """The tokenizer of an encoder card, padding and truncating to its text tower's context length.

    Raises:
        CardError: the card has no `tokenizer`, names an unknown open_clip model, or a JSON tokenizer
            that does not fit the text tower (no end token, end token not the highest id, too many ids).
        MissingResourceError: the JSON file does not exist.
    """
    from vlm_eval.encoders.openclip_family import model_config

    text_cfg = model_config(card).get("text_cfg") or {}
    context_length = int(text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH))
    path = tokenizer_file(card)
    if path is None:
        return _open_clip_tokenizer(card, context_length)
    tokenizer = JsonTokenizer(path, context_length)
    _check_fits_text_tower(card, tokenizer, text_cfg)
    return tokenizer


def tokenizer_file(card: EncoderCard) -> Path | None:
    """The card's JSON tokenizer file, or None when it names an open_clip tokenizer.

    Cheap (no import of tokenizers or open_clip), so a run checks it before loading anything.

    Raises:
        CardError: the card has no `tokenizer` field.
        MissingResourceError: the JSON file does not exist.
    """
    if not card.tokenizer:
        where = card.card_path or "(built from --encoder)"
        raise CardError(
            f"encoder {card.name!r} ({where}) has no `tokenizer`, which zero-shot classification needs for the "
            "class prompts: add `tokenizer: <open_clip model name, e.g. ViT-L-14>` or `tokenizer: <file>.json` "
            "(a HF tokenizers file, relative to the card) to the card"
        )
    if not card.tokenizer.endswith(".json"):
        return None
    path = card_relative(card, card.tokenizer)
    if not path.is_file():
        raise MissingResourceError(f"tokenizer file of encoder {card.name!r} not found: {path} (field `tokenizer` "
                                   f"of {card.card_path})")
    return path


class JsonTokenizer:
    """A HF `tokenizers` JSON tokenizer producing open_clip's token layout (see the module docstring)."""

    def __init__(self, path: Path, context_length: int):
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.context_length = context_length
        try:
            self._tokenizer = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise CardError(f"cannot read tokenizer file {self.path}: {exc}") from exc
        self._tokenizer.no_truncation()  # truncation here keeps the end token, unlike theirs
        self._tokenizer.no_padding()
        self.end_id = self._end_id()
        self.unknown_id = self._unknown_id()
        self._warned = False

    def __call__(self, texts: list[str]) -> torch.Tensor:
        import torch

        tokens = torch.full((len(texts), self.context_length), PAD_ID, dtype=torch.long)
        for row, (text, encoding) in enumerate(zip(texts, self._tokenizer.encode_batch(list(texts)))):
            ids = encoding.ids
            if len(ids) > self.context_length:
                ids = ids[: self.context_length - 1] + [self.end_id]
            self._warn_unknown(text, ids)
            tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens

    @property
    def max_id(self) -> int:
        return max(self._tokenizer.get_vocab(with_added_tokens=True).values())

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode([i for i in ids if i != PAD_ID], skip_special_tokens=True)

    def _end_id(self) -> int:
        """The end token: the last id the post-processor appends (to the empty text, only start and end)."""
        ids = self._tokenizer.encode("").ids
        if not ids:
            raise CardError(f"tokenizer {self.path} adds no start/end tokens; its post_processor must add them "
                            '(e.g. TemplateProcessing(single="<start_of_text> $A <end_of_text>"))')
        return ids[-1]

    def _unknown_id(self) -> int | None:
        token = getattr(self._tokenizer.model, "unk_token", None)
        return None if token is None else self._tokenizer.token_to_id(token)

    def _warn_unknown(self, text: str, ids: list[int]) -> None:
        if self.unknown_id is None or self._warned or self.unknown_id not in ids:
            return
        self._warned = True
        log.warning("tokenizer %s: %r has words outside the vocabulary (encoded as the unknown token); "
                    "further texts with unknown words are not reported", self.path, text)


def _check_fits_text_tower(card: EncoderCard, tokenizer: JsonTokenizer, text_cfg: dict) -> None:
    vocab_size = int(text_cfg.get("vocab_size", 49408))
    if tokenizer.max_id >= vocab_size:
        raise CardError(f"encoder {card.name!r}: tokenizer {tokenizer.path} has ids up to {tokenizer.max_id}, but the "
                        f"text tower's vocab_size is {vocab_size}")
    if text_cfg.get("pool_type", "argmax") == "argmax" and tokenizer.end_id != tokenizer.max_id:
        raise CardError(
            f"encoder {card.name!r}: the end token of tokenizer {tokenizer.path} has id {tokenizer.end_id}, not the "
            f"highest id ({tokenizer.max_id}); open_clip's text tower pools at the highest id (pool_type argmax), "
            "so give the start and end tokens the two highest ids"
        )


def _open_clip_tokenizer(card: EncoderCard, context_length: int) -> Tokenize:
    import open_clip

    name = card.tokenizer
    if ":" not in name and open_clip.get_model_config(name) is None:
        raise CardError(f"encoder {card.name!r}: tokenizer {name!r} is neither a .json file nor an open_clip model "
                        "name (see open_clip.list_models())")
    return open_clip.get_tokenizer(name, context_length=context_length)
