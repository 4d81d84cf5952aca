"""Shared fixtures: tiny random-weight models of the real architectures, built in memory."""

import pytest
import torch

from vlm_eval import cards

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llava():
    """The tiny-random-llava card's model with its own (native) tower, fp32."""
    from vlm_eval.vlms.llava import load_llava

    return load_llava(cards.load_card("vlms", "tiny-random-llava"), None, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def tiny_encoder():
    from vlm_eval.encoders.openclip_family import load_openclip_encoder

    return load_openclip_encoder(cards.load_card("encoders", "tiny-random"))


@pytest.fixture(scope="session")
def tiny_robust_llava(tiny_encoder):
    """tiny-random-llava with the tiny-random open_clip encoder swapped in (robust protocol)."""
    from vlm_eval.vlms.llava import load_llava

    return load_llava(cards.load_card("vlms", "tiny-random-llava"), tiny_encoder, dtype=torch.float32, device="cpu")
