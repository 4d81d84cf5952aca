"""Recipe: train the mini world's CLIP (`encoders/mini-clip.yaml`) contrastively, from scratch, on CPU.

    python scripts/train_mini_clip.py                       # the committed weights (about 16 min on 2 cores)
    python scripts/train_mini_clip.py --steps 3 --train-size 64 --out /tmp/clip/mini-clip.safetensors   # smoke test

The architecture comes from the card (open_clip's own `CLIP` class), the text tokenizer from
`vlm_eval.miniworld.tokenizers`. Batches hold whole shape-twin pairs of the training split (see
`vlm_eval.miniworld.scenes`), so the loss can only be lowered by telling shapes apart.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "assets" / "miniworld" / "mini-clip.safetensors"
TOKENIZER_NAME = "mini-clip-tokenizer.json"  # written next to the weights, where the card expects it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from vlm_eval.miniworld.training import recipe_parser

    p = recipe_parser(__doc__, steps=2500, batch_size=128, warmup=100, weight_decay=0.1)  # batches of whole twin pairs
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--logit-scale", type=float, default=30.0, help="initial temperature (learned)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from vlm_eval.miniworld.training import start

    args = parse_args(argv)
    images, captions = training_data(start(args), args.train_size)
    model, tokenize = build_model(args.logit_scale, args.out.with_name(TOKENIZER_NAME))
    train(model, tokenize, images, captions, args)
    save(model, args.out)


def training_data(root: Path, limit: int | None) -> tuple[torch.Tensor, list[tuple[str, ...]]]:
    """The training images (uint8, in memory) and their five captions, read through the real reader."""
    from vlm_eval.data import read_karpathy_captions
    from vlm_eval.miniworld.training import load_images

    samples = read_karpathy_captions(root / "dataset_miniworld.json", root / "images", split="train")
    samples = samples[: limit - limit % 2] if limit else samples  # whole twin pairs only
    return load_images([s.image_path for s in samples]), [s.references for s in samples]


def build_model(logit_scale: float, tokenizer_out: Path):
    """open_clip `CLIP` of the card's architecture, and the toolkit's tokenizer function for its text tower."""
    import open_clip

    from vlm_eval import cards
    from vlm_eval.encoders.openclip_family import model_config
    from vlm_eval.encoders.text import JsonTokenizer
    from vlm_eval.miniworld.tokenizers import clip_tokenizer

    config = model_config(cards.load_card("encoders", "mini-clip"))
    tokenizer = clip_tokenizer()
    if tokenizer.get_vocab_size() != config["text_cfg"]["vocab_size"]:
        raise SystemExit(f"the card's vocab_size {config['text_cfg']['vocab_size']} != tokenizer size "
                         f"{tokenizer.get_vocab_size()}: update encoders/mini-clip.yaml")
    tokenizer_out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tokenizer_out))
    model = open_clip.CLIP(**config, init_logit_scale=math.log(logit_scale))
    return model, JsonTokenizer(tokenizer_out, config["text_cfg"]["context_length"])


def train(model, tokenize, images: torch.Tensor, captions: list[tuple[str, ...]], args: argparse.Namespace) -> None:
    from open_clip.loss import ClipLoss

    from vlm_eval.miniworld.training import adamw, autocast, lr_at, normalize

    loss_fn, optimizer = ClipLoss(), adamw(model, args.lr, args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed)
    n_pairs, pairs_per_batch = len(images) // 2, max(1, args.batch_size // 2)
    model.to(args.device).train()
    start, running = time.time(), []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        pairs = torch.randperm(n_pairs, generator=generator)[:pairs_per_batch]
        index = torch.stack([2 * pairs, 2 * pairs + 1], 1).flatten()
        pick = torch.randint(0, 5, (len(index),), generator=generator)
        texts = [captions[i][k] for i, k in zip(index.tolist(), pick.tolist())]
        with autocast(args):
            image_features = model.encode_image(normalize(images[index].to(args.device)), normalize=True)
            text_features = model.encode_text(tokenize(texts).to(args.device), normalize=True)
        loss = loss_fn(image_features.float(), text_features.float(), model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}  loss {sum(running) / len(running):.3f}  "
                  f"scale {model.logit_scale.exp().item():.1f}  {time.time() - start:.0f}s", flush=True)
            running = []


def save(model, out: Path) -> None:
    """The whole CLIP (vision and text towers) as safetensors, open_clip's own key layout."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
