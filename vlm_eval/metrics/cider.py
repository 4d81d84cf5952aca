"""CIDEr-D on raw captions, computed exactly as pycocoevalcap's ``COCOEvalCap`` does.

Pipeline: pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1, run with Java; lower-cases
and drops punctuation tokens) on the references and, separately, on the candidates, then
pycocoevalcap's ``Cider`` arithmetic (CIDEr-D: sigma=6 length penalty, clipped counts, x10; vectorised in
`cider_d`, equal to it to 1e-12). Scores are reported x100 like most papers. CIDEr's idf comes from the references of the set being scored,
so per-item scores depend on the whole set: score everything in one call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import IO, TypeVar

import numpy as np

from vlm_eval.errors import MissingResourceError, VlmEvalError
from vlm_eval.metrics.cider_d import Candidates, CiderD

__all__ = ["CiderSet", "cider", "require_java"]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

# Characters other than "\n" that CoreNLP's PTBTokenizer treats as line ends (checked with the
# bundled 3.4.1 jar). PTBTokenizer replaces only "\n"; any of these would shift every following
# caption by a line, so they are turned into spaces first.
_EXTRA_LINE_BREAKS = str.maketrans({c: " " for c in "\r\x0b\x0c\u2028\u2029"})

_JAVA_HELP = (
    "CIDEr needs Java for pycocoevalcap's PTB tokenizer, but no `java` executable is on PATH. "
    "Install one (e.g. `apt-get install default-jre-headless`) or put any Java >= 8 on PATH."
)


def require_java() -> None:
    """Check that a ``java`` executable is on PATH, which CIDEr's PTB tokenizer runs.

    Raises:
        MissingResourceError: If Java is not found, with install instructions.
    """
    if shutil.which("java") is None:
        raise MissingResourceError(_JAVA_HELP)


def _preview(ids: Sequence[Hashable], limit: int = 5) -> str:
    """Format a few ids for an error message."""
    shown = ", ".join(repr(i) for i in sorted(ids, key=repr)[:limit])
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    return f"[{shown}{more}]"


def _check_ids(refs: Mapping[K, Sequence[str]], cands: Mapping[K, str]) -> None:
    """The same ids on both sides; a ValueError that names the culprits."""
    missing = [k for k in refs if k not in cands]
    extra = [k for k in cands if k not in refs]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) of refs have no candidate: {_preview(missing)}")
        if extra:
            parts.append(f"{len(extra)} candidate id(s) have no refs: {_preview(extra)}")
        if {str(k) for k in missing} & {str(k) for k in extra}:
            parts.append("some ids differ only in type (e.g. int 1 vs str '1')")
        raise ValueError("cider: refs and cands must have the same ids; " + "; ".join(parts))


def _check_refs(refs: Mapping[K, Sequence[str]]) -> None:
    if not refs:
        raise ValueError("cider: nothing to score (refs and cands are empty)")
    for key, ref_list in refs.items():
        if isinstance(ref_list, str) or not all(isinstance(r, str) for r in ref_list):
            raise TypeError(f"cider: refs[{key!r}] must be a list of strings, got {ref_list!r}")
        if len(ref_list) == 0:
            raise ValueError(f"cider: refs[{key!r}] is empty; every item needs a reference")


def _check_cands(refs: Mapping[K, Sequence[str]], cands: Mapping[K, str]) -> None:
    unknown = [key for key in cands if key not in refs]
    if unknown:
        raise ValueError(f"cider: {len(unknown)} candidate id(s) have no refs: {_preview(unknown)}")
    for key, cand in cands.items():
        if not isinstance(cand, str):
            raise TypeError(f"cider: cands[{key!r}] must be a string, got {type(cand).__name__}")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[IO[bytes] | None]:
    """Send file descriptor 2 to a temporary file for the duration (Java's chatter goes there).

    Yields the file (to read back) or None when fd 2 cannot be redirected, e.g. when it is closed.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:
            yield None
            return
        try:
            os.dup2(sink.fileno(), 2)
            yield sink
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _ptb_tokenize(captions: dict[K, list[str]]) -> dict[K, list[str]]:
    """Tokenise captions with pycocoevalcap's PTBTokenizer, quietly, and check the result."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    coco_style = {
        key: [{"caption": c.translate(_EXTRA_LINE_BREAKS)} for c in caps]
        for key, caps in captions.items()
    }
    java_output = ""
    try:
        with _stderr_captured() as sink:
            tokenized = PTBTokenizer().tokenize(coco_style)
            if sink is not None:
                sink.seek(0)
                java_output = sink.read().decode(errors="replace").strip()
    except PermissionError as err:
        # PTBTokenizer writes its input file next to its jar inside the installed package.
        raise VlmEvalError(
            f"pycocoevalcap's PTB tokenizer could not write its temporary file ({err}); "
            "make the pycocoevalcap/tokenizer directory of the environment writable"
        ) from err
    if java_output:
        logger.debug("PTBTokenizer (Java) said: %s", java_output)
    # PTBTokenizer ignores Java's exit status; a crash shows up as missing lines or a trace.
    lost_lines = any(len(tokenized.get(k, ())) != len(v) for k, v in captions.items())
    if lost_lines or "Exception" in java_output:
        raise VlmEvalError(
            "pycocoevalcap's PTB tokenizer (Java) failed; "
            f"Java said: {java_output[-2000:] or '(nothing)'}"
        )
    return tokenized


class CiderSet:
    """CIDEr-D against one fixed reference set: the references are PTB-tokenised once (one Java start), each
    candidate text once however often it is scored, and the scoring itself runs without Java.

    Scores any subset of the items (relative to the whole set's idf, as the full-set score gives them) and,
    for bootstrap intervals, every item under each resample's idf (`resampled`).
    """

    def __init__(self, refs: Mapping[K, Sequence[str]]):
        _check_refs(refs)
        require_java()
        self.ids = list(refs)
        self.row = {key: row for row, key in enumerate(self.ids)}
        self.refs = {key: list(refs[key]) for key in self.ids}
        tokens = _ptb_tokenize(self.refs)
        if not any(ref.split() for key in self.ids for ref in tokens[key]):
            # the idf would have no term at all (pycocoevalcap fails on it too)
            raise ValueError("cider: every reference caption is empty after PTB tokenisation")
        self.model = CiderD([tokens[key] for key in self.ids])
        self.tokenized: dict[str, str] = {}  # candidate text -> its PTB tokens
        self.resampling: dict[tuple, Candidates] = {}  # the output sets being bootstrapped (clean, attacked)

    def same_references(self, refs: Mapping[K, Sequence[str]]) -> bool:
        """The same ids in the same order (resamples count items in this order), with the same references."""
        return list(refs) == self.ids and all(list(refs[key]) == self.refs[key] for key in self.ids)

    def _prepare(self, cands: Mapping[K, str]) -> Candidates:
        _check_cands(self.refs, cands)
        new = sorted({text for text in cands.values() if text not in self.tokenized})
        if new:
            tokens = _ptb_tokenize({i: [text] for i, text in enumerate(new)})
            self.tokenized.update((text, tokens[i][0]) for i, text in enumerate(new))
        keys = list(cands)
        return self.model.candidates([self.row[key] for key in keys], [self.tokenized[cands[key]] for key in keys])

    def per_item(self, cands: Mapping[K, str]) -> dict[K, float]:
        """CIDEr-D (x100) of the candidates of some items, relative to the whole reference set."""
        scores = self.model.scores(self._prepare(cands))[0]
        return {key: float(score) * 100.0 for key, score in zip(cands, scores)}

    def resampled(self, cands: Mapping[K, str], draws: np.ndarray) -> np.ndarray:
        """(r, len(cands)): per-item CIDEr-D (x100) under the idf of each resample; `draws` (r, N): how often
        each item (in the order of `ids`) was drawn. The bootstrap asks chunk after chunk for the same output
        sets, so the last two are kept prepared."""
        key = tuple(cands.items())
        if key not in self.resampling:
            self.resampling = {**dict(list(self.resampling.items())[-1:]), key: self._prepare(cands)}
        return self.model.scores(self.resampling[key], draws) * 100.0


def cider(refs: Mapping[K, Sequence[str]], cands: Mapping[K, str]) -> tuple[float, dict[K, float]]:
    """Compute CIDEr-D (x100) of candidate captions against reference captions.

    Equal to ``COCOEvalCap(...).eval["CIDEr"] * 100`` for the same data: both sides are
    tokenised with pycocoevalcap's PTBTokenizer, then scored with its ``Cider`` arithmetic. The corpus
    score is the mean of the per-item scores. Because CIDEr's idf is computed from the refs of
    the evaluated set, a single-item set always scores 0 and per-item scores change with the set.

    Args:
        refs: Raw (untokenised) reference captions per id; int and str ids both work.
        cands: One raw candidate caption per id, same ids as ``refs``; may be empty strings.

    Returns:
        ``(corpus_score, per_item)``, with per-item scores under the caller's ids.

    Raises:
        ValueError: If the ids of ``refs`` and ``cands`` differ (names some of them), either is
            empty, or an item has no reference.
        TypeError: If a caption is not a string.
        MissingResourceError: If Java (needed by the PTB tokenizer) is not on PATH.
        VlmEvalError: If the tokenizer fails.
    """
    _check_ids(refs, cands)  # the rest is checked by CiderSet
    per_item = CiderSet(refs).per_item({key: cands[key] for key in refs})
    return sum(per_item.values()) / len(per_item), per_item
