"""Rebuild `tests/data/llava_llama2_tokenizer.json.gz`: the real Llama-2 / LLaVA-1.5 tokenizer, offline.

    python scripts/build_llama_tokenizer.py                   # `npm pack llama-tokenizer-js@1.2.2` in a temp dir
    python scripts/build_llama_tokenizer.py path/to/package   # an unpacked copy of that npm package

The npm package `llama-tokenizer-js` 1.2.2 (MIT) embeds Llama-2's 32000 tokens and its BPE merges
(`llama_vocab_base64`, `llama_merges_binary` in `llama-tokenizer.js`). From them this builds a `tokenizers`
tokenizer.json laid out as Llama-2's / `llava-hf/llava-1.5-7b-hf`'s: byte-fallback BPE, the SentencePiece
normaliser (prepend "▁", spaces -> "▁"), a BOS post-processor, and LLaVA's added `<image>` (32000) and
`<pad>` (32001). Tests use it to check prompt ids against LLaVA's reference tokenisation without a download.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import re
import struct
import subprocess
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "data" / "llava_llama2_tokenizer.json.gz"
PACKAGE = "llama-tokenizer-js@1.2.2"
# ids the npm package's own tests expect (add_bos, prefix space): a check that vocab and merges decoded right
KNOWN_IDS = {
    "grabbed": [1, 2646, 1327, 287],
    "           grabbed": [1, 9651, 2646, 1327, 287],
    " \n": [1, 259, 13],
    "ax\n####\nboo": [1, 4853, 13, 4136, 13, 833, 29877],
    "🦙Ꙋ": [1, 29871, 243, 162, 169, 156, 237, 156, 141],
}


def read_package(folder: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(tokens in id order, merges in priority order) from the package's `llama-tokenizer.js`."""
    source = (folder / "llama-tokenizer.js").read_text(encoding="utf-8")

    def constant(name: str) -> bytes:
        match = re.search(rf'const {name} = "([^"]*)"', source)
        if match is None:
            raise SystemExit(f"{name} not found in {folder / 'llama-tokenizer.js'}")
        return base64.b64decode(match.group(1))

    vocab = constant("llama_vocab_base64").decode("utf-8").split("\n")
    raw = constant("llama_merges_binary")
    pairs = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(vocab[a], vocab[b]) for a, b in zip(pairs[::2], pairs[1::2])]
    if len(vocab) != 32000 or len(set(vocab)) != 32000:
        raise SystemExit(f"expected 32000 distinct tokens, got {len(vocab)}")
    return vocab, merges


def build(vocab: list[str], merges: list[tuple[str, str]]) -> Tokenizer:
    """The tokenizer.json pipeline of Llama-2 (SentencePiece converted by transformers) plus LLaVA's tokens."""
    tokenizer = Tokenizer(
        models.BPE(
            vocab={token: i for i, token in enumerate(vocab)},
            merges=merges,
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # <unk> <s> </s> are in the vocabulary (ids 0-2); <image> and <pad> get the next ids, 32000 and 32001
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")]
    )
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, nargs="?", help=f"an unpacked {PACKAGE} (default: npm pack it)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.package
        if folder is None:
            subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
            (tarball,) = Path(tmp).glob("*.tgz")
            subprocess.run(["tar", "xzf", tarball.name], cwd=tmp, check=True)
            folder = Path(tmp) / "package"
        tokenizer = build(*read_package(folder))

    for text, ids in KNOWN_IDS.items():
        if tokenizer.encode(text).ids != ids:
            raise SystemExit(f"{text!r}: got {tokenizer.encode(text).ids}, the package expects {ids}")
    if [tokenizer.token_to_id(t) for t in ("<image>", "<pad>")] != [32000, 32001]:
        raise SystemExit("LLaVA's added tokens did not get ids 32000 and 32001")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime 0 and no file name in the header: the same inputs give the same bytes
    args.out.write_bytes(gzip.compress(tokenizer.to_str().encode("utf-8"), compresslevel=9, mtime=0))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
