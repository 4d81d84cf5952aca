"""LLaVA prompt ids equal the reference's `tokenizer_image_token` ids on the real Llama-2 vocabulary.

The fixture (`scripts/build_llama_tokenizer.py`) is Llama-2's tokenizer.json with LLaVA's `<image>` (32000)
and `<pad>` (32001). Loaded raw with `tokenizers`, it keeps the Prepend("▁") normaliser: the legacy
SentencePiece behaviour LLaVA was trained with. transformers 5's `LlamaTokenizer` replaces that pipeline
by Metaspace(prepend_scheme="first") unless `legacy` is true, which drops the "▁" after `<image>` when a
prompt is tokenised whole; chunking at `<image>` as the reference does restores it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from vlm_eval.vlms.llava.adapter import LlavaAdapter, image_prompt_ids
from vlm_eval.vlms.llava.prompts import llava_prompt

FIXTURE = Path(__file__).parent / "data" / "llava_llama2_tokenizer.json.gz"
MINI_LLAVA = Path(__file__).parent.parent / "assets" / "miniworld" / "mini-llava"
BOS, EOS, PREFIX, NEWLINE, IMAGE = 1, 2, 29871, 13, 32000
PROMPTS = [llava_prompt("caption"), llava_prompt("vqa", "What is the man holding?")]
TARGETS = ["A cat sitting on a mat.", "yes"]
LEGACY = ["absent", False, True]


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    return gzip.decompress(FIXTURE.read_bytes()).decode("utf-8")


@pytest.fixture(scope="module")
def raw(tokenizer_json: str) -> Tokenizer:
    """The tokenizer.json as is (legacy SentencePiece: "▁" prepended to every piece of text)."""
    return Tokenizer.from_str(tokenizer_json)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory, tokenizer_json: str) -> dict[Any, Any]:
    """transformers' `LlamaTokenizer` over the fixture, for each value of `legacy` in tokenizer_config.json."""
    tokenizers = {}
    for legacy in LEGACY:
        folder = tmp_path_factory.mktemp(f"llama-legacy-{legacy}")
        (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "pad_token": "<pad>", "add_bos_token": True, "padding_side": "left"}
        if legacy != "absent":
            config["legacy"] = legacy
        (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        tokenizers[legacy] = AutoTokenizer.from_pretrained(folder)
    return tokenizers


def reference_ids(raw: Tokenizer, text: str) -> list[int]:
    """`tokenizer_image_token` of LLaVA's mm_utils: BOS, then every chunk without its own BOS, images between."""
    chunks = [raw.encode(chunk).ids for chunk in text.split("<image>")]
    assert all(chunk[0] == BOS for chunk in chunks)
    ids = [BOS]
    for k, chunk in enumerate(chunks):
        ids += ([IMAGE] if k else []) + chunk[1:]
    return ids


def id_adapter(tokenizer: Any, image_token_id: int, n_image_tokens: int = 1) -> LlavaAdapter:
    """A `LlavaAdapter` without a model: its id methods read only these attributes."""
    vlm = object.__new__(LlavaAdapter)
    vlm.tokenizer, vlm.image_token_id, vlm.n_image_tokens = tokenizer, image_token_id, n_image_tokens
    vlm.eos_id = tokenizer.eos_token_id
    return vlm


def around_image(ids: list[int]) -> list[int]:
    at = ids.index(IMAGE)
    return ids[at - 1 : at + 3]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_ids_are_the_references_whatever_legacy_says(raw, llama, prompt):
    expected = reference_ids(raw, prompt)
    assert around_image(expected) == [PREFIX, IMAGE, PREFIX, NEWLINE]
    for legacy in LEGACY:
        vlm = id_adapter(llama[legacy], IMAGE)
        assert vlm.prompt_ids(prompt) == expected, f"legacy {legacy}"
        assert image_prompt_ids(llama[legacy], prompt, IMAGE) == expected
    assert id_adapter(llama["absent"], IMAGE, 576).prompt_ids(prompt).count(IMAGE) == 576

    # why the chunking: tokenised whole, the default (non-legacy) tokenizer loses the "▁" after the image
    whole = llama["absent"](prompt).input_ids
    assert around_image(whole) == [PREFIX, IMAGE, NEWLINE, whole[whole.index(IMAGE) + 2]]
    assert whole != expected


def test_the_captioning_prompt_ids(raw):
    """The full ids of the captioning prompt, for anyone checking a real LLaVA tokenizer by hand."""
    assert reference_ids(raw, PROMPTS[0]) == [
        1, 319, 13563, 1546, 263, 12758, 1404, 322, 385, 23116, 21082, 20255, 29889, 450, 20255, 4076, 8444,
        29892, 13173, 29892, 322, 1248, 568, 6089, 304, 278, 1404, 29915, 29879, 5155, 29889, 3148, 1001, 29901,
        29871, 32000, 29871, 13, 1184, 29894, 680, 263, 3273, 5777, 683, 363, 445, 1967, 29889, 319, 1799, 9047,
        13566, 29901,
    ]  # fmt: skip


@pytest.mark.parametrize("prompt,target", list(zip(PROMPTS, TARGETS)))
def test_target_ids_are_what_the_references_label_mask_leaves(raw, llama, tokenizer_json, prompt, target):
    conversation = reference_ids(raw, f"{prompt} {target}</s>")  # vicuna_v1 ends the answer with "</s>"

    # the reference masks `len(tokenizer.encode(context))` positions, with "<image>" as plain text (the
    # original tokenizer has no such token): "▁<" "image" ">" take the places of "▁" IMAGE "▁", so the
    # mask ends exactly where the answer starts in the chunked ids
    plain = json.loads(tokenizer_json)
    plain["added_tokens"] = [t for t in plain["added_tokens"] if t["content"] not in ("<image>", "<pad>")]
    context = prompt.split("ASSISTANT:")[0] + "ASSISTANT:"
    context_len = len(Tokenizer.from_str(json.dumps(plain)).encode(context).ids)
    assert context_len == len(reference_ids(raw, prompt))
    assert conversation[:context_len] == reference_ids(raw, prompt)
    labels = conversation[context_len:]
    assert labels[-1] == EOS and raw.decode(labels) == target

    for legacy in LEGACY:
        prompt_ids, target_ids = id_adapter(llama[legacy], IMAGE).target_ids(prompt, target)
        assert target_ids == labels, f"legacy {legacy}"
        assert prompt_ids + target_ids == conversation


@pytest.mark.parametrize("prompt", PROMPTS + [f"{PROMPTS[0]} a red circle", f"{PROMPTS[1]} blue"])
def test_the_shipped_tokenizers_give_the_same_ids_as_before(prompt):
    """The mini LLaVA was trained on whole-prompt ids; for its word-level and the tiny byte tokenizer the
    chunked ids are the same, so the shipped weights stay valid."""
    from vlm_eval.vlms.llava.tiny import byte_tokenizer

    for tokenizer in (AutoTokenizer.from_pretrained(MINI_LLAVA), byte_tokenizer()):
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        assert image_prompt_ids(tokenizer, prompt, image_id) == tokenizer(prompt).input_ids
