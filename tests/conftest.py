"""Shared fixtures: tiny random-weight models of the real architectures, built in memory."""

from pathlib import Path

import pytest
import torch

from vlm_eval import cards

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llava():
    """The tiny-random-llava card's model with its own (native) tower, fp32."""
    from vlm_eval.vlms.llava.load import load_llava

    return load_llava(cards.load_card("vlms", "tiny-random-llava"), None, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def tiny_encoder():
    from vlm_eval.encoders.openclip_family import load_openclip_encoder

    return load_openclip_encoder(cards.load_card("encoders", "tiny-random"))


@pytest.fixture(scope="session")
def tiny_robust_llava(tiny_encoder):
    """tiny-random-llava with the tiny-random open_clip encoder swapped in (robust protocol)."""
    from vlm_eval.vlms.llava.load import load_llava

    return load_llava(cards.load_card("vlms", "tiny-random-llava"), tiny_encoder, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def vitl_encoder():
    """The robust-protocol encoder architecture (open_clip ViT-L-14, QuickGELU, 224 px), random weights."""
    from vlm_eval.cards import EncoderCard
    from vlm_eval.encoders.openclip_family import load_openclip_encoder

    card = EncoderCard(name="vitl-random", family="openclip", arch="ViT-L-14-quickgelu", source={"random": 0})
    return load_openclip_encoder(card)


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline HF cache (constants are read at import, so they are patched as well)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="session")
def tiny_masked_lm(tmp_path_factory) -> Path:
    """A random BERT masked LM over a word-level vocabulary, saved as a transformers folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    words = "a red blue green circle square cross big small two three shapes on the of".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, pad_token_id=0))
    folder = tmp_path_factory.mktemp("masked-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
