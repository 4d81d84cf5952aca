"""Word-level tokenizers over the mini world's closed vocabulary, built offline from its texts.

The LLaVA tokenizer also knows every word of the LLaVA-1.5 prompt (system message, instructions), so
the mini LLaVA is trained and evaluated on the real prompt format. The CLIP tokenizer puts its start
and end tokens at the two highest ids, so open_clip's default argmax pooling reads the end token, as
with real CLIP's BPE vocabulary.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from vlm_eval.miniworld.language import fixed_texts
from vlm_eval.vlms.llava.prompts import INSTRUCTIONS, VICUNA_SYSTEM
from vlm_eval.vlms.openflamingo.prompts import CHUNKS

LLAVA_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
CLIP_START, CLIP_END = "<start_of_text>", "<end_of_text>"


def words(texts: list[str], lowercase: bool) -> list[str]:
    """The sorted distinct words of `texts` as the Whitespace pre-tokenizer splits them."""
    split = pre_tokenizers.Whitespace()
    found = {w for t in texts for w, _ in split.pre_tokenize_str(t.lower() if lowercase else t)}
    return sorted(found)


def llava_tokenizer():
    """The mini LLaVA's tokenizer (`PreTrainedTokenizerFast`): ids 0-4 are <pad> <s> </s> <unk> <image>."""
    from transformers import PreTrainedTokenizerFast

    prompt_texts = [VICUNA_SYSTEM, "USER: ASSISTANT:"] + [i.replace("{question}", "") for i in INSTRUCTIONS.values()]
    vocab = {t: i for i, t in enumerate(LLAVA_SPECIAL)}
    for word in words(fixed_texts() + prompt_texts, lowercase=False):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    tokenizer.add_special_tokens(list(LLAVA_SPECIAL))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def flamingo_tokenizer():
    """The mini Flamingo's tokenizer, shaped like GPT-NeoX's: `<|endoftext|>` (id 0) as BOS, EOS and
    unknown, no pad token and no BOS prepended; the OpenFlamingo loader adds its own tokens."""
    from transformers import PreTrainedTokenizerFast

    end = "<|endoftext|>"
    vocab = {end: 0}
    prompt_texts = [c.format(question="", answer="") for c in CHUNKS.values()]
    for word in words(fixed_texts() + prompt_texts, lowercase=False):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=end))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens([end])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=end, eos_token=end, unk_token=end)


def clip_tokenizer() -> Tokenizer:
    """The mini CLIP's text tokenizer (lower-cased words; <pad> = 0, start and end tokens last)."""
    vocab = {"<pad>": 0, "<unk>": 1}
    for word in words(fixed_texts(), lowercase=True):
        vocab.setdefault(word, len(vocab))
    vocab[CLIP_START], vocab[CLIP_END] = len(vocab), len(vocab) + 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<pad>", "<unk>", CLIP_START, CLIP_END])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_START} $A {CLIP_END}", special_tokens=[(CLIP_START, vocab[CLIP_START]), (CLIP_END, vocab[CLIP_END])]
    )
    return tokenizer
