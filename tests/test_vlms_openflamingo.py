"""The toolkit's own OpenFlamingo on tiny random weights of the real architecture (gates opened):
checkpoint keys as published, media masking, prompts and losses as RobustVLM builds them, the
reference `open_flamingo` package's logits, demonstrations, and the missing-weights message."""

import copy
import dataclasses
import json

import pytest
import torch
from PIL import Image

from vlm_eval import cards
from vlm_eval.cli import main
from vlm_eval.contracts import Batch
from vlm_eval.data.samples import Sample
from vlm_eval.errors import CheckpointError, VlmEvalError
from vlm_eval.tasks.demonstrations import Demonstrations, demonstration_card
from vlm_eval.vlms import VLM_FAMILIES
from vlm_eval.vlms.batching import left_pad
from vlm_eval.vlms.openflamingo.load import load_checkpoint
from vlm_eval.vlms.openflamingo.model import FlamingoModel
from vlm_eval.vlms.openflamingo.tiny import open_gates


def load(name: str):
    card = cards.load_card("vlms", name)
    return VLM_FAMILIES.get(card.family).load(card, None, torch.float32, "cpu", False)


@pytest.fixture(scope="module")
def mpt():
    return load("tiny-random-openflamingo")


@pytest.fixture(scope="module")
def neox():
    return load("tiny-random-openflamingo-neox")


def test_checkpoint_keys_are_the_published_names(mpt, neox):
    keys = set(mpt.model.checkpoint_keys())
    for key in ("perceiver.latents", "perceiver.layers.1.0.norm_media.bias", "perceiver.layers.0.0.to_kv.weight",
                "perceiver.layers.0.1.3.weight", "perceiver.norm.weight", "lang_encoder.transformer.wte.weight",
                "lang_encoder.transformer.blocks.1.gated_cross_attn_layer.attn.to_q.weight",
                "lang_encoder.transformer.blocks.0.gated_cross_attn_layer.attn_gate",
                "lang_encoder.transformer.blocks.0.gated_cross_attn_layer.ff.3.weight"):
        assert key in keys
    assert not any(".decoder_layer." in k or k.startswith("vision_encoder") for k in keys)
    neox_keys = set(neox.model.checkpoint_keys())  # untied embeddings, cross-attention before every 2nd layer
    assert {"lang_encoder.gpt_neox.embed_in.weight", "lang_encoder.lm_head.weight"} <= neox_keys  # embed_out: renamed
    assert any("layers.1.gated_cross_attn_layer" in k for k in neox_keys)
    assert not any("layers.0.gated_cross_attn_layer" in k for k in neox_keys)
    assert mpt.model.lang_encoder.get_input_embeddings().num_embeddings == len(mpt.tokenizer) == 256 + 1 + 3


def test_a_checkpoint_loads_strictly_and_a_wrong_one_lists_its_keys(mpt, tmp_path):
    state = {k: v.clone() for k, v in mpt.model.state_dict().items() if k in mpt.model.checkpoint_keys()}
    state["lang_encoder.old_decoder_blocks.0.norm_1.weight"] = torch.ones(64)  # an alias upstream files may keep
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    fresh = copy.deepcopy(mpt.model)
    open_gates(fresh, 0.1, seed=7)
    assert not torch.equal(fresh.perceiver.latents, mpt.model.perceiver.latents)
    load_checkpoint(fresh, path)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, mpt.model.state_dict()[key]), key
    del state["perceiver.norm.weight"]
    state["perceiver.extra"] = torch.zeros(1)
    state["lang_encoder.transformer.wte.weight"] = torch.zeros(3, 64)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(fresh, path)
    assert "missing keys (1): perceiver.norm.weight" in str(error.value)
    assert "unexpected keys (1): perceiver.extra" in str(error.value)
    assert "lang_encoder.transformer.wte.weight: (3, 64) in the file, (260, 64) in the model" in str(error.value)


def test_a_gpt_neox_checkpoint_by_its_published_names_loads(neox, tmp_path):
    state = {k: v.clone() for k, v in neox.model.state_dict().items() if k in neox.model.checkpoint_keys()}
    state["lang_encoder.embed_out.weight"] = state.pop("lang_encoder.lm_head.weight")
    state = {k.replace("gpt_neox.layers.1.gated_cross_attn_layer", "gated_cross_attn_layers.1"): v for k, v in state.items()}
    torch.save({"model_state_dict": state}, tmp_path / "checkpoint.pt")
    fresh = copy.deepcopy(neox.model)
    open_gates(fresh, 0.1, seed=7)
    load_checkpoint(fresh, tmp_path / "checkpoint.pt")
    assert torch.equal(fresh.lang_encoder.lm_head.weight, neox.model.lang_encoder.lm_head.weight)
    key = "lang_encoder.gpt_neox.layers.1.gated_cross_attn_layer.attn.to_q.weight"
    assert torch.equal(fresh.state_dict()[key], neox.model.state_dict()[key])


def test_text_before_the_image_never_sees_it_and_text_after_does(mpt):
    prompt = mpt.prompt("caption", None, [(None, "a red square"), (None, "two blue circles")])
    ids = torch.tensor([mpt._ids(prompt + "a green cross")])
    image_at = ids[0].tolist().index(mpt.image_id)
    pixels = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    logits = [mpt.model(mpt.normalize(p[None, None]), input_ids=ids).logits[0] for p in pixels]
    assert torch.allclose(logits[0][:image_at], logits[1][:image_at], atol=1e-6)
    assert not torch.allclose(logits[0][image_at:], logits[1][image_at:], atol=1e-3)


def test_cached_generation_attends_to_the_prompts_last_image(mpt):
    """KV-cached steps carry no <image> token: they must read the prompt's image, as a full forward does."""
    ids = torch.tensor([mpt._ids(mpt.prompt("vqa", "What is it?"))])
    latents = mpt.latents(torch.rand(1, 3, 224, 224), None)
    outputs = []
    for cache in (True, False):
        with mpt.model.conditioned(latents):
            outputs.append(mpt.model.lang_encoder.generate(input_ids=ids, max_new_tokens=6, do_sample=False,
                                                          use_cache=cache, pad_token_id=mpt.pad_id))
    assert torch.equal(outputs[0], outputs[1])


def test_demonstrations_images_enter_as_constants_and_only_the_query_is_attacked(mpt):
    generator = torch.Generator().manual_seed(2)
    pixels, context = torch.rand(2, 3, 224, 224, generator=generator), torch.rand(2, 2, 3, 224, 224, generator=generator)
    prompt = mpt.prompt("caption", None, [(None, "a red square"), (None, "two crosses")], with_images=True)
    assert prompt == "<image>Output:a red square<|endofchunk|><image>Output:two crosses<|endofchunk|><image>Output:"
    batch, targets = Batch(["a", "b"], pixels, [prompt] * 2, "caption", context), ["one cross", "a blue circle"]
    x = pixels.clone().requires_grad_(True)
    loss = mpt.loss_closure(batch, targets)(x)
    (grad,) = torch.autograd.grad(loss[0], x)  # the closure's only input is the query image
    assert grad[0].abs().sum() > 0 and grad[1].abs().max() == 0
    other = mpt.loss_closure(dataclasses.replace(batch, context=context.flip(1)), targets)(pixels)
    assert not torch.allclose(loss.detach(), other)  # the demonstrations' images are read
    single = batch.select([1], pixels[1:])
    assert mpt.loss_closure(single, targets[1:])(pixels[1:]).item() == pytest.approx(loss[1].item(), abs=1e-5)
    assert mpt.generate(single, 4) == mpt.generate(batch, 4)[1:]


def test_prompts_render_as_robustvlm_builds_them(mpt):
    demos = [(None, "a red: square"), (None, "one cross")]
    assert mpt.prompt("caption", None, demos) == (
        "Output:a red square<|endofchunk|>Output:one cross<|endofchunk|><image>Output:")
    assert mpt.prompt("vqa", "What colour is it?", [("How many?", "2")]) == (
        "Question:How many? Short answer:2<|endofchunk|><image>Question:What colour is it? Short answer:")


def test_the_loss_is_the_summed_ce_of_the_answer_after_the_last_colon(mpt):
    prompt = mpt.prompt("vqa", "Is it red? Look:", [("How many?", "2")])
    ids, labels = mpt.labelled_ids(prompt, "yes: sure")
    kept = [t for t, label in zip(ids, labels) if label != -100]
    assert mpt.tokenizer.decode(kept) == "yes sure"  # no <|endofchunk|>, no colon, nothing before the last colon
    pixels = torch.rand(1, 3, 224, 224)
    loss = mpt.loss_closure(Batch(["0"], pixels, [prompt], "vqa"), ["yes: sure"])(pixels)
    logits = mpt.model(mpt.normalize(pixels[:, None]), input_ids=torch.tensor([ids])).logits[0, :-1]
    wanted = torch.tensor(labels[1:])
    by_hand = torch.nn.functional.cross_entropy(logits, wanted, ignore_index=-100, reduction="sum")
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_logits_agree_with_the_reference_open_flamingo_package(mpt):
    """The published package (installed without its pins) on the same tiny weights, at its own sizes."""
    reference = pytest.importorskip("open_flamingo.src.flamingo")
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance

    with mpt.model.plain_language_model() as plain:
        lm, our_lm = copy.deepcopy(plain), copy.deepcopy(plain)
    ours = FlamingoModel(copy.deepcopy(mpt.model.vision_encoder), our_lm, mpt.image_id, 64, cross_attn_every_n_layers=1)
    open_gates(ours, 0.5, seed=3)
    extend_instance(lm, FlamingoLMMixin)
    lm.set_decoder_layers_attr_name("transformer.blocks")
    clip = torch.nn.Module()  # upstream takes the whole CLIP and keeps its `.visual`
    clip.visual = copy.deepcopy(mpt.model.vision_encoder)
    theirs = reference.Flamingo(clip, lm, mpt.end_of_chunk_id, mpt.image_id, vis_dim=64, cross_attn_every_n_layers=1)
    their_keys = {k for k in theirs.state_dict() if not k.startswith(("vision_encoder.", "lang_encoder.old_decoder_blocks.",
                                                                       "lang_encoder.gated_cross_attn_layers."))}
    assert their_keys == {k for k in ours.state_dict() if not k.startswith("vision_encoder.")}
    theirs.load_state_dict(ours.state_dict(), strict=False)
    prompts = [mpt.prompt("caption", None, [(None, "a red square")] * 2), mpt.prompt("vqa", "What is it?")]
    ids, mask = left_pad([mpt._ids(p) for p in prompts], mpt.pad_id, mpt.device)
    pixels = mpt.normalize(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        expected = theirs(pixels[:, None, None], ids, attention_mask=mask.bool()).logits  # (B, T, frames, ...)
        got = ours(pixels[:, None], input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-4)


def test_demonstrations_are_drawn_per_sample_from_the_seeded_query_set():
    pool = [Sample(str(i), None, (f"caption {i} ", "other"), attack_texts=(f" first {i} ", "x")) for i in range(50)]
    demos = Demonstrations(pool, per_sample=2, with_images=False, seed=42)
    query = Sample("q7", None, ("ref",))
    assert demos.of(query) == Demonstrations(list(pool), 2, False, 42).of(query)  # a sample's own, whatever the batch
    assert demos.of(query) != demos.of(Sample("q8", None, ("ref",))) or demos.of(query) != demos.of(Sample("q9", None, ("r",)))
    assert all(answer.startswith("first ") and not answer.endswith(" ") for _, answer in demos.of(query))
    vqa = Demonstrations([Sample("1", None, ("yes", "no"), question="Is it?")], per_sample=1, with_images=False, seed=0)
    assert vqa.of(query) == [("Is it?", "yes")]  # the first human answer, as OpenFlamingo
    with pytest.raises(VlmEvalError, match="demonstrations: {split: train}"):
        demonstration_card(dataclasses.replace(cards.load_card("tasks", "mini-coco"), demonstrations=None))


def test_an_openflamingo_run_prompts_with_two_text_only_demonstrations(tmp_path):
    out = tmp_path / "run"
    args = ["--vlm", "tiny-random-openflamingo", "--encoder", "tiny-random", "--task", "mini-vqa", "--n-samples", "3",
            "--batch-size", "2", "--output-dir", str(out)]
    assert main(args) == 0
    resolved = json.loads((out / "summary.json").read_text())["config"]["resolved"]
    assert resolved["demonstrations"] == 2 and resolved["postprocess"] == "openflamingo"
    assert main([*args[:-2], "--shots", "4", "--output-dir", str(tmp_path / "r4")]) == 0
    resolved = json.loads((tmp_path / "r4" / "summary.json").read_text())["config"]["resolved"]
    assert resolved["demonstrations"] == 4 and resolved["demonstration_images"] is True
    assert main(["--vlm", "tiny-random-llava", "--encoder", "tiny-random", "--task", "mini-vqa", "--shots", "4"]) == 2


def test_openflamingo_without_weights_names_the_checkpoint_the_language_model_and_how(tmp_path, empty_hub_cache, capsys):
    assert main(["--vlm", "openflamingo-9b", "--encoder", "fare4", "--task", "coco", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "hf download openflamingo/OpenFlamingo-9B-vitl-mpt7b checkpoint.pt" in err
    assert "hf download anas-awadalla/mpt-7b" in err and "Traceback" not in err


MOSAIC = {"model_type": "mosaic_gpt", "d_model": 32, "n_heads": 4, "n_layers": 2, "mlp_ratio": 4, "max_seq_len": 64,
          "vocab_size": 50, "alibi": True, "alibi_bias_max": 8, "attn_qk_ln": True, "no_bias": True,
          "attn_clip_qkv": None, "logit_scale": None, "softmax_scale": None}


def mosaic_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """A MosaicGPT state dict by its own parameter names (no biases anywhere, as `no_bias` makes it)."""
    g = torch.Generator().manual_seed(seed)
    d, state = MOSAIC["d_model"], {"transformer.wte.weight": torch.randn(MOSAIC["vocab_size"], MOSAIC["d_model"], generator=g)}
    shapes = {"ln_1.weight": (d,), "attn.Wqkv.weight": (3 * d, d), "attn.q_ln.weight": (d,), "attn.k_ln.weight": (d,),
              "attn.out_proj.weight": (d, d), "ln_2.weight": (d,), "mlp.mlp_up.weight": (4 * d, d),
              "mlp.mlp_down.weight": (d, 4 * d)}
    for i in range(MOSAIC["n_layers"]):
        for name, shape in shapes.items():  # LayerNorm weights near 1, matrices random
            noise = torch.randn(shape, generator=g)
            state[f"transformer.blocks.{i}.{name}"] = 1 + 0.1 * noise if len(shape) == 1 else 0.3 * noise
    state["transformer.ln_f.weight"] = torch.ones(d)
    return state


def mosaic_logits(state: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """MosaicGPT's forward written out: pre-LN blocks, QK LayerNorm over the full width before the heads
    split, ALiBi (slopes 2^(-8h/H)), causal softmax attention, exact GELU, tied output."""
    F = torch.nn.functional
    d, heads, length = MOSAIC["d_model"], MOSAIC["n_heads"], ids.shape[1]
    norm = lambda x, w: F.layer_norm(x, (d,), w)  # noqa: E731
    slopes = 1 / 2 ** (torch.arange(1, heads + 1) * (MOSAIC["alibi_bias_max"] / heads))
    bias = (torch.arange(1 - length, 1)[None, None, :] * slopes[:, None, None])  # (heads, 1, keys)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    x = state["transformer.wte.weight"][ids]
    for i in range(MOSAIC["n_layers"]):
        w = {k.split(f"blocks.{i}.")[1]: v for k, v in state.items() if f"blocks.{i}." in k}
        q, k, v = (norm(x, w["ln_1.weight"]) @ w["attn.Wqkv.weight"].T).chunk(3, dim=-1)
        q, k = norm(q, w["attn.q_ln.weight"]), norm(k, w["attn.k_ln.weight"])
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / (d / heads) ** 0.5 + bias
        attended = (scores.masked_fill(future, float("-inf")).softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + attended @ w["attn.out_proj.weight"].T
        x = x + F.gelu(norm(x, w["ln_2.weight"]) @ w["mlp.mlp_up.weight"].T) @ w["mlp.mlp_down.weight"].T
    return norm(x, state["transformer.ln_f.weight"]) @ state["transformer.wte.weight"].T


def test_mosaic_gpt_runs_on_native_mpt_with_its_qk_layernorm(tmp_path):
    from vlm_eval.vlms.openflamingo.mosaic import load_mosaic_gpt

    state = mosaic_weights()
    (tmp_path / "config.json").write_text(json.dumps(MOSAIC))
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = load_mosaic_gpt(tmp_path, torch.float32)
    ids = torch.randint(0, MOSAIC["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert torch.allclose(got, mosaic_logits(state, ids), atol=1e-4)
    plain_qk_ln = {k: (torch.ones_like(v) if "_ln." in k else v) for k, v in state.items()}
    assert not torch.allclose(got, mosaic_logits(plain_qk_ln, ids), atol=1e-2)  # its QK LayerNorm weights are used
    del state["transformer.blocks.1.attn.q_ln.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="transformer.blocks.1.attn.q_ln.weight"):
        load_mosaic_gpt(tmp_path, torch.float32)


def write_coco(root):
    """COCO in its real layout: a Karpathy file with train and test images, val2014 references, both image folders."""
    from PIL import Image

    entries = []
    for i, (split, folder) in enumerate([("train", "train2014")] * 3 + [("test", "val2014")] * 2):
        name = f"COCO_{folder}_{i:012d}.jpg"
        (root / "coco" / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (40 * i, 90, 20)).save(root / "coco" / folder / name)
        entries.append({"cocoid": i, "split": split, "filepath": folder, "filename": name,
                        "sentences": [{"raw": f" first caption {i} "}, {"raw": f"second {i}"}]})
    (root / "coco" / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    tests = [e for e in entries if e["split"] == "test"]
    (root / "coco" / "captions_val2014.json").write_text(json.dumps({
        "images": [{"id": e["cocoid"]} for e in tests],
        "annotations": [{"image_id": e["cocoid"], "id": e["cocoid"], "caption": "a reference"} for e in tests]}))


def test_coco_demonstrations_come_from_the_karpathy_train_split_with_their_images(tmp_path):
    from vlm_eval.tasks.demonstrations import read_demonstrations

    write_coco(tmp_path)
    demos = read_demonstrations(cards.load_card("tasks", "coco"), tmp_path, 2, True, seed=42)
    assert sorted(s.id for s in demos.query_set) == ["0", "1", "2"]
    assert all(path.parent.name == "train2014" and path.is_file() for path in (s.image_path for s in demos.query_set))
    query = Sample("3", None, ("a reference",))
    assert all(answer.startswith("first caption") and answer == answer.strip() for _, answer in demos.of(query))
    for shots in ("0", "2"):
        args = ["--vlm", "tiny-random-openflamingo", "--encoder", "tiny-random", "--task", "coco", "--data-root",
                str(tmp_path), "--n-samples", "all", "--shots", shots, "--output-dir", str(tmp_path / f"run{shots}")]
        assert main(args) == 0
        assert json.loads((tmp_path / f"run{shots}" / "summary.json").read_text())["n_samples"] == 2


def test_an_encoder_of_another_width_is_refused_by_name():
    from vlm_eval.encoders import ENCODER_FAMILIES

    vlm = load("tiny-random-openflamingo")  # a 64-wide resampler
    card = cards.load_card("encoders", "mini-clip")  # a 128-wide ViT
    with pytest.raises(CheckpointError, match="width 128 does not fit this Flamingo's resampler"):
        vlm.swap_encoder(ENCODER_FAMILIES.get(card.family).load_vision(card, None, False))


def test_a_task_puts_each_samples_demonstrations_and_their_images_into_the_batch(mpt, tmp_path):
    from vlm_eval.tasks import TASK_TYPES
    from vlm_eval.tasks.data import check_task_data, read_task_samples

    write_coco(tmp_path)
    card = cards.load_card("tasks", "coco")
    task = TASK_TYPES.get("captioning")(card, {"postprocess": "openflamingo"})
    task.want_demonstrations(2, True, 42, tmp_path)
    task.setup({})
    samples = read_task_samples(card, check_task_data(card, tmp_path))
    batch = task.batch_of(mpt, samples, torch.rand(len(samples), 3, 224, 224))
    assert batch.kind == "caption" and batch.context.shape == (2, 2, 3, 224, 224)
    for sample, prompt, context in zip(samples, batch.prompts, batch.context):
        drawn = task.demonstrations.draw(sample)
        assert prompt == mpt.prompt("caption", None, task.demonstrations.of(sample), with_images=True)
        assert prompt.count("<image>") == 3
        assert torch.equal(context[0], mpt.preprocess(Image.open(drawn[0].image_path)))
