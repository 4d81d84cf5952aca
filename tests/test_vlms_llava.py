import pytest
import torch

from vlm_eval.contracts import Batch
from vlm_eval.vlms.llava.prompts import VICUNA_SYSTEM, llava_prompt

PROMPTS = [
    llava_prompt("caption"),
    llava_prompt("vqa", "What colour is the shape?"),
    llava_prompt("vizwiz", "How many?"),
]
TARGETS = ["a red circle on a striped background", "blue", "3"]


def make_batch(vlm, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, vlm.image_size, vlm.image_size, generator=gen)
    return Batch([str(i) for i in range(n)], pixels, PROMPTS[:n])


def test_prompts_follow_the_vicuna_template():
    assert llava_prompt("caption") == (
        f"{VICUNA_SYSTEM} USER: <image>\nProvide a short caption for this image. ASSISTANT:"
    )
    assert llava_prompt("vqa", "Why?").endswith("Why?\nAnswer the question using a single word or phrase. ASSISTANT:")
    assert "respond with 'Unanswerable'.\nAnswer the question" in llava_prompt("vizwiz", "Why?")


@pytest.mark.parametrize("model", ["tiny_llava", "tiny_robust_llava"])
def test_batch_size_does_not_change_outputs_or_losses(model, request):
    vlm = request.getfixturevalue(model)
    batch = make_batch(vlm)
    together = vlm.generate(batch, max_new_tokens=6)
    alone = [vlm.generate(Batch([i], batch.pixels[k : k + 1], [batch.prompts[k]]), 6)[0] for k, i in enumerate(batch.ids)]
    assert together == alone
    assert len(set(together)) > 1, "outputs should depend on the image and prompt"

    losses = vlm.loss_closure(batch, TARGETS)(batch.pixels)
    for k in range(3):
        single = Batch([batch.ids[k]], batch.pixels[k : k + 1], [batch.prompts[k]])
        loss = vlm.loss_closure(single, [TARGETS[k]])(single.pixels)
        assert loss.item() == pytest.approx(losses[k].item(), abs=1e-5)
    rows = torch.tensor([2, 0])  # the samples an attack still runs
    subset = vlm.loss_closure(batch, TARGETS)(batch.pixels[rows], rows)
    assert torch.allclose(subset, losses[rows], atol=1e-5)


def test_gradients_reach_the_pixels_and_stay_per_sample(tiny_robust_llava):
    vlm = tiny_robust_llava
    batch = make_batch(vlm)
    x = batch.pixels.clone().requires_grad_(True)
    loss = vlm.loss_closure(batch, TARGETS)(x)
    assert loss.shape == (3,)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert grad.abs().sum(dim=(1, 2, 3)).min() > 0

    # the loss of sample 0 does not depend on the pixels of sample 1
    (grad0,) = torch.autograd.grad(vlm.loss_closure(batch, TARGETS)(x)[0], x)
    assert grad0[1:].abs().max() == 0


def test_loss_is_the_cross_entropy_of_the_target_tokens_only(tiny_llava):
    """In a padded batch of different lengths, each loss equals transformers' own unpadded `labels=` loss."""
    vlm = tiny_llava
    batch = make_batch(vlm)
    ours = vlm.loss_closure(batch, TARGETS)(batch.pixels)
    for k in range(3):
        prompt_ids, target_ids = vlm.target_ids(batch.prompts[k], TARGETS[k])
        assert target_ids[-1] == vlm.eos_id
        ids = torch.tensor([prompt_ids + target_ids])
        labels = torch.tensor([[-100] * len(prompt_ids) + target_ids])
        expected = vlm.model(input_ids=ids, pixel_values=vlm.normalize(batch.pixels[k : k + 1]), labels=labels).loss
        assert ours[k].item() == pytest.approx(expected.item(), rel=1e-5)

    other = vlm.loss_closure(batch, ["something else entirely"] * 3)(batch.pixels)
    assert (other - ours).abs().min() > 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_half_precisions_give_finite_losses_and_gradients(tiny_encoder, dtype, tol):
    from vlm_eval import cards
    from vlm_eval.vlms.llava.load import load_llava

    vlm = load_llava(cards.load_card("vlms", "tiny-random-llava"), tiny_encoder, dtype=dtype, device="cpu")
    batch = make_batch(vlm)
    x = batch.pixels.clone().requires_grad_(True)
    losses = vlm.loss_closure(batch, TARGETS)(x)
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
    (grad,) = torch.autograd.grad(losses.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    single = Batch(["0"], batch.pixels[:1], batch.prompts[:1])
    assert vlm.loss_closure(single, TARGETS[:1])(single.pixels).item() == pytest.approx(losses[0].item(), rel=tol)


def test_robust_mode_swaps_the_tower_and_counts_image_tokens(tiny_llava, tiny_robust_llava, tiny_encoder):
    assert tiny_llava.describe()["mode"] == "native" and tiny_llava.image_size == 336
    robust = tiny_robust_llava.describe()
    assert robust == {"mode": "robust", "image_size": 224, "image_tokens": (224 // 32) ** 2, "geometry": "pad-square"}
    ids = tiny_robust_llava.prompt_ids(PROMPTS[0])
    assert ids.count(tiny_robust_llava.image_token_id) == 49
    tower = tiny_robust_llava.model.model.vision_tower
    conv1 = tiny_encoder.visual.conv1.weight
    assert torch.equal(tower.embeddings.patch_embedding.weight, conv1)


def test_wrong_image_size_is_refused(tiny_robust_llava):
    with pytest.raises(ValueError, match="224x224"):
        tiny_robust_llava.normalize(torch.rand(1, 3, 336, 336))


def test_encoder_of_another_width_is_refused(tiny_encoder):
    from vlm_eval import cards
    from vlm_eval.errors import CheckpointError
    from vlm_eval.vlms.llava.load import load_llava

    card = cards.load_card("vlms", "tiny-random-llava")
    wide = dict(card.build, text=card.build["text"])
    wide["vision"] = dict(card.build["vision"], hidden_size=96, num_attention_heads=3)
    wide_card = type(card)(**{**card.__dict__, "build": wide})
    with pytest.raises(CheckpointError, match="width 64 does not fit"):
        load_llava(wide_card, tiny_encoder, dtype=torch.float32, device="cpu")


@pytest.mark.slow
def test_full_vit_l14_in_llava_gives_256_image_tokens_and_pixel_gradients(vitl_encoder):
    """The robust protocol on the real encoder architecture: 224 px, layer -2, CLS dropped -> 256 tokens."""
    from vlm_eval.vlms.llava.adapter import LlavaAdapter
    from vlm_eval.vlms.llava.load import swap_vision_tower
    from vlm_eval.encoders.convert import to_hf_vision_model
    from vlm_eval.vlms.llava.tiny import byte_tokenizer, random_llava

    vision = {"hidden_size": 1024, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "patch_size": 48, "image_size": 336}  # a stand-in native tower; only its width matters
    model = random_llava(vision, {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "num_key_value_heads": 4})
    swap_vision_tower(model, to_hf_vision_model(vitl_encoder.visual))
    vlm = LlavaAdapter(model, byte_tokenizer(), mode="robust")
    assert vlm.describe() == {"mode": "robust", "image_size": 224, "image_tokens": 256, "geometry": "pad-square"}

    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loss = vlm.loss_closure(Batch(["0"], x, PROMPTS[:1]), TARGETS[:1])(x)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss).all() and grad.abs().sum() > 0
