"""Recipe: train the mini world's LLaVA (`vlms/mini-llava.yaml`) on CPU, from scratch.

    python scripts/train_mini_llava.py                      # the committed weights (about 14 min on 2 cores)
    python scripts/train_mini_llava.py --steps 3 --train-size 64 --out /tmp/llava   # smoke test

transformers' `LlavaForConditionalGeneration`: the vision tower is the trained mini CLIP converted with
the toolkit's converter and frozen; the 2-layer projector and a small Llama are trained on captions and
VQA answers in the real LLaVA-1.5 prompt format, tokenised exactly as the toolkit's LLaVA adapter does.
The frozen tower's layer -2 features are computed once, so training steps never run it.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "assets" / "miniworld" / "mini-llava"
TEXT_CONFIG = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 4, "max_position_embeddings": 256, "tie_word_embeddings": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from vlm_eval.miniworld.training import recipe_parser

    p = recipe_parser(__doc__, steps=3000, batch_size=32, warmup=50, weight_decay=0.01)
    p.add_argument("--clip", type=Path, help="mini CLIP weights (default: the mini-clip card's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--vqa-share", type=float, default=0.7, help="share of VQA answers among the training targets")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from vlm_eval.miniworld.training import start

    args = parse_args(argv)
    captions, vqa, image_paths = training_data(start(args), args.train_size)
    adapter, vision = build_model(args.clip)
    features = vision_features(vision.to(args.device), image_paths)
    train(adapter, features, captions, vqa, args)
    save(adapter, args.out)
    show_examples(adapter, image_paths[:4])


def training_data(root: Path, limit: int | None):
    """Caption and VQA examples of the training split (through the real readers) and the image paths."""
    from vlm_eval.miniworld.training import majority, train_split

    samples, questions = train_split(root, limit)
    captions = [(row, "caption", None, text) for row, s in enumerate(samples) for text in s.references]
    vqa = [(row, "vqa", q.question, majority(q.references)) for row, q in questions]
    return captions, vqa, [s.image_path for s in samples]


def build_model(clip_path: Path | None):
    """A LLaVA adapter around a fresh model whose vision tower is the converted mini CLIP, and that tower."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from vlm_eval.encoders.convert import to_hf_vision_model
    from vlm_eval.encoders.openclip_family import load_openclip_encoder
    from vlm_eval.miniworld.tokenizers import llava_tokenizer
    from vlm_eval.miniworld.training import mini_clip_card
    from vlm_eval.vlms.llava.adapter import LlavaAdapter

    vision = to_hf_vision_model(load_openclip_encoder(mini_clip_card(clip_path)).visual)
    tokenizer = llava_tokenizer()
    text_config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=1, eos_token_id=2, **TEXT_CONFIG)
    patches = (vision.config.image_size // vision.config.patch_size) ** 2
    config = LlavaConfig(vision_config=vision.config, text_config=text_config, image_token_id=tokenizer.image_token_id,
                         image_seq_length=patches, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    return LlavaAdapter(model, tokenizer, mode="robust"), vision.eval()


@torch.no_grad()
def vision_features(vision, paths: list[Path], batch: int = 250) -> torch.Tensor:
    """(N, patches, width): the frozen tower's layer -2 patch features (CLS dropped), as LLaVA reads them."""
    from tqdm import tqdm

    from vlm_eval.miniworld.training import load_images, normalize

    images = load_images(paths)
    chunks = []
    for start in tqdm(range(0, len(images), batch), desc="vision features", unit="batch"):
        pixels = normalize(images[start : start + batch].to(vision.device))
        hidden = vision(pixels, output_hidden_states=True).hidden_states
        chunks.append(hidden[-2][:, 1:])
    return torch.cat(chunks)


def language_model_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, features: torch.Tensor):
    """LLaVA's training loss with cached vision features put where the image tokens are."""
    embeds = model.get_input_embeddings()(ids)
    image_slots = (ids == model.config.image_token_id).unsqueeze(-1)
    projected = model.model.multi_modal_projector(features).to(embeds.dtype)
    embeds = embeds.masked_scatter(image_slots, projected)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    logits = model.lm_head(hidden[:, :-1]).float()
    return F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100)


def batch_tensors(adapter, examples: list[tuple]) -> tuple[torch.Tensor, ...]:
    """Right-padded (ids, mask, labels) and image rows; only the answer and its EOS carry labels."""
    pairs = [adapter.target_ids(adapter.prompt(kind, question), target) for _, kind, question, target in examples]
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.zeros((len(pairs), width), dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, (prompt, target) in enumerate(pairs):
        end = len(prompt) + len(target)
        ids[row, :end], mask[row, :end] = torch.tensor(prompt + target), 1
        labels[row, len(prompt) : end] = torch.tensor(target)
    return ids, mask, labels, torch.tensor([e[0] for e in examples])


def train(adapter, features: torch.Tensor, captions: list[tuple], vqa: list[tuple], args: argparse.Namespace) -> None:
    from vlm_eval.miniworld.training import adamw, autocast, lr_at

    model = adapter.model
    model.requires_grad_(True)  # the adapter freezes everything for evaluation; train all but the tower
    model.model.vision_tower.requires_grad_(False)
    model.to(args.device).train()
    optimizer = adamw(model, args.lr, args.weight_decay)
    rng = random.Random(args.seed)
    start, running = time.time(), []
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        n_vqa = sum(rng.random() < args.vqa_share for _ in range(args.batch_size)) if vqa else 0
        examples = rng.choices(vqa, k=n_vqa) + rng.choices(captions, k=args.batch_size - n_vqa)
        ids, mask, labels, rows = (t.to(args.device) for t in batch_tensors(adapter, examples))
        with autocast(args):
            loss = language_model_loss(model, ids, mask, labels, features[rows])
        if not torch.isfinite(loss):
            raise SystemExit(f"step {step}: the loss is {loss.item()}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps}  loss {sum(running) / len(running):.3f}  {time.time() - start:.0f}s", flush=True)
            running = []
    model.cpu().eval().requires_grad_(False)


def save(adapter, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"wrote {out} ({size:.1f} MB)")


def show_examples(adapter, paths: list[Path]) -> None:
    """Captions of a few training images: a quick look that training worked."""
    from vlm_eval.data import load_image, preprocess_image
    from vlm_eval.contracts import Batch

    pixels = torch.stack([preprocess_image(load_image(p, str(p)), 224) for p in paths])
    prompts = [adapter.prompt("caption")] * len(paths)
    for path, text in zip(paths, adapter.generate(Batch([str(p) for p in paths], pixels, prompts), 40)):
        print(f"{path.name}: {text}")


if __name__ == "__main__":
    main()
