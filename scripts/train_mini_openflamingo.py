"""Recipe: train the mini world's OpenFlamingo (`vlms/mini-openflamingo.yaml`) on CPU, from scratch.

    python scripts/train_mini_openflamingo.py                     # the committed weights
    python scripts/train_mini_openflamingo.py --steps 3 --train-size 64 --out /tmp/of   # smoke test

The toolkit's own Flamingo (Perceiver resampler, gated cross-attention before every decoder layer) over
transformers' MPT, the vision encoder the mini CLIP (frozen; patch tokens before ln_post, cached once).
Resampler, cross-attention and language model are trained on OpenFlamingo's evaluation format: half
the sequences are "0-shot" (two text-only demonstrations, then the image and its caption or answer),
half interleave two or three images, each with its own caption or answer, as k-shot prompts do. The
loss is on the answers and their `<|endofchunk|>`. The files are written as the released models are:
a transformers language-model folder and a checkpoint of the Flamingo parts by their published names.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "assets" / "miniworld" / "mini-openflamingo"
LM_CONFIG = {"d_model": 256, "n_heads": 4, "n_layers": 4, "expansion_ratio": 2, "max_seq_len": 512}
PERCEIVER = {"depth": 2, "dim_head": 32, "heads": 4, "num_latents": 16}
CROSS_ATTENTION = {"dim_head": 32, "heads": 4, "ff_mult": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from vlm_eval.miniworld.training import recipe_parser

    p = recipe_parser(__doc__, steps=3000, batch_size=32, warmup=50, weight_decay=0.01)
    p.add_argument("--clip", type=Path, help="mini CLIP weights (default: the mini-clip card's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--vqa-share", type=float, default=0.7, help="share of VQA chunks among the training chunks")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from vlm_eval.miniworld.training import start

    args = parse_args(argv)
    examples, image_paths = training_data(start(args), args.train_size)
    adapter = build_model(args.clip)
    features = vision_tokens(adapter.model.vision_encoder.to(args.device), image_paths)
    train(adapter, features, examples, args)
    save(adapter, args.out)


def training_data(root: Path, limit: int | None) -> tuple[dict[str, list[tuple]], list[Path]]:
    """Per prompt kind, (image row, question, answer, demonstration answer) of the training split, and the images."""
    from vlm_eval.miniworld.training import majority, train_split

    samples, questions = train_split(root, limit)
    captions = [(row, None, text, text) for row, s in enumerate(samples) for text in s.references]
    vqa = [(row, q.question, majority(q.references), q.references[0]) for row, q in questions]
    return {"caption": captions, "vqa": vqa}, [s.image_path for s in samples]


def build_model(clip_path: Path | None):
    """A fresh Flamingo adapter: the mini CLIP's tower, a random MPT and fresh Flamingo parts (gates at 0)."""
    from transformers import MptConfig, MptForCausalLM

    from vlm_eval.encoders.openclip_family import load_openclip_encoder
    from vlm_eval.miniworld.tokenizers import flamingo_tokenizer
    from vlm_eval.miniworld.training import mini_clip_card
    from vlm_eval.vlms.openflamingo.adapter import FlamingoAdapter
    from vlm_eval.vlms.openflamingo.load import add_flamingo_tokens
    from vlm_eval.vlms.openflamingo.model import FlamingoModel
    from vlm_eval.vlms.openflamingo.prompts import IMAGE

    encoder = load_openclip_encoder(mini_clip_card(clip_path))
    tokenizer = flamingo_tokenizer()
    lm = MptForCausalLM(MptConfig(vocab_size=len(tokenizer), **LM_CONFIG))
    add_flamingo_tokens(tokenizer, lm)
    model = FlamingoModel(encoder.visual, lm, tokenizer.convert_tokens_to_ids(IMAGE), encoder.visual.conv1.out_channels,
                          1, PERCEIVER, CROSS_ATTENTION)
    return FlamingoAdapter(model, tokenizer, encoder.image_size)


@torch.no_grad()
def vision_tokens(visual, paths: list[Path], batch: int = 250) -> torch.Tensor:
    """(N, patches, width): the frozen tower's patch tokens before ln_post, as Flamingo reads them."""
    from tqdm import tqdm

    from vlm_eval.miniworld.training import load_images, normalize

    images = load_images(paths)
    chunks = []
    for start in tqdm(range(0, len(images), batch), desc="vision tokens", unit="batch"):
        chunks.append(visual(normalize(images[start : start + batch].to(next(visual.parameters()).device)))[1])
    return torch.cat(chunks)


def sequence(adapter, examples: dict[str, list[tuple]], rng: random.Random, vqa_share: float, images: int):
    """(ids, labels, image rows) of one training sequence with `images` image chunks (0: the "0-shot" form)."""
    from vlm_eval.vlms.openflamingo.prompts import END_OF_CHUNK, Demonstration, flamingo_prompt

    kind = "vqa" if rng.random() < vqa_share else "caption"
    pool = examples[kind]
    if images == 0:
        demos = [Demonstration(q, demo) for _, q, _, demo in rng.sample(pool, 2)]
        row, question, answer, _ = rng.choice(pool)
        ids, labels = adapter.labelled_ids(flamingo_prompt(kind, question, demos), answer)
        return ids, labels[:-1] + [ids[-1]], [row]  # the loss also teaches the closing <|endofchunk|>
    ids, labels, rows = [], [], []
    for row, question, answer, _ in rng.sample(pool, images):
        chunk_ids, chunk_labels = adapter.labelled_ids(flamingo_prompt(kind, question), answer)
        ids, labels, rows = ids + chunk_ids, labels + chunk_labels[:-1] + [chunk_ids[-1]], rows + [row]
    assert adapter.tokenizer.convert_ids_to_tokens(ids[-1]) == END_OF_CHUNK
    return ids, labels, rows


def batch_tensors(adapter, examples, rng: random.Random, args: argparse.Namespace):
    """Right-padded (ids, mask, labels) of a batch whose sequences all hold the same number of images."""
    images = rng.choice([0, 0, 0, 2, 3])
    seqs = [sequence(adapter, examples, rng, args.vqa_share, images) for _ in range(args.batch_size)]
    width = max(len(ids) for ids, _, _ in seqs)
    ids = torch.full((len(seqs), width), adapter.pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (seq_ids, seq_labels, _) in enumerate(seqs):
        ids[row, : len(seq_ids)], labels[row, : len(seq_ids)], mask[row, : len(seq_ids)] = (
            torch.tensor(seq_ids), torch.tensor(seq_labels), 1)
    return ids, mask, labels, torch.tensor([rows for _, _, rows in seqs])


def train(adapter, features: torch.Tensor, examples: dict, args: argparse.Namespace) -> None:
    from vlm_eval.miniworld.training import adamw, autocast, lr_at

    model = adapter.model
    model.requires_grad_(True)
    model.vision_encoder.requires_grad_(False)
    model.to(args.device).train()
    optimizer = adamw(model, args.lr, args.weight_decay)
    rng = random.Random(args.seed)
    start, running = time.time(), []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        ids, mask, labels, rows = (t.to(args.device) for t in batch_tensors(adapter, examples, rng, args))
        with autocast(args):
            latents = model.perceiver(features[rows])
            with model.conditioned(latents):
                logits = model.lang_encoder(input_ids=ids, attention_mask=mask).logits
            loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100)
        if not torch.isfinite(loss):
            raise SystemExit(f"step {step}: the loss is {loss.item()}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            gate = sum(p.tanh().abs().item() for n, p in model.named_parameters() if n.endswith("attn_gate"))
            print(f"step {step + 1}/{args.steps}  loss {sum(running) / len(running):.3f}  mean |tanh gate| "
                  f"{gate / len(model.flamingo_layers()):.2f}  {time.time() - start:.0f}s", flush=True)
            running = []
    model.cpu().eval().requires_grad_(False)


def save(adapter, out: Path) -> None:
    """The language model folder (with its tokenizer) and checkpoint.safetensors of the Flamingo parts."""
    from safetensors.torch import save_file

    model = adapter.model
    with model.plain_language_model() as lm:
        lm.save_pretrained(out / "language_model")
    adapter.tokenizer.save_pretrained(out / "language_model")
    state = model.state_dict()
    save_file({k: state[k].contiguous() for k in model.checkpoint_keys()}, out / "checkpoint.safetensors")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"wrote {out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
