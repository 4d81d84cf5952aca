"""Benchmark: one attack step of OpenFlamingo per sample, by batch size, with random weights (cost only).

    python scripts/bench_openflamingo.py --shape tiny                               # CPU: checks the script
    python scripts/bench_openflamingo.py --shape 9b --device cuda --dtype bf16      # OpenFlamingo-9B's shape

Builds the toolkit's Flamingo in the shape of OpenFlamingo-9B (CLIP ViT-L/14 at 224 px, MPT-7B: 32
layers of width 4096, cross-attention before every 4th, a 50,280-token vocabulary) with random
weights, directly on the device, and times the toolkit's own loss closure (forward and backward to
the pixels: one APGD iteration's model work) on a COCO "0-shot" prompt (two text-only demonstrations)
with a 12-token target. Prints seconds per sample-step by batch size and the peak memory on CUDA.
The numbers go into docs/performance.md; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlm_eval.contracts import Batch  # noqa: E402
from vlm_eval.vlms.openflamingo.adapter import FlamingoAdapter  # noqa: E402
from vlm_eval.vlms.openflamingo.load import add_flamingo_tokens  # noqa: E402
from vlm_eval.vlms.openflamingo.model import FlamingoModel  # noqa: E402
from vlm_eval.vlms.openflamingo.tiny import byte_tokenizer  # noqa: E402

SHAPES = {
    "tiny": {"vision": {"width": 64, "layers": 2, "heads": 2}, "lm": {"d_model": 64, "n_heads": 4, "n_layers": 4},
             "every": 2, "vocab": 512},
    "9b": {"vision": {"width": 1024, "layers": 24, "heads": 16}, "lm": {"d_model": 4096, "n_heads": 32, "n_layers": 32},
           "every": 4, "vocab": 50280},
}
PROMPT = ("Output:A man riding a wave on top of a surfboard.<|endofchunk|>Output:A kitchen with a stove and a "
          "white refrigerator.<|endofchunk|><image>Output:")
TARGET = "A group of people standing around a table with food."


def build(shape: dict, device: str, dtype: torch.dtype) -> FlamingoAdapter:
    from open_clip.transformer import VisionTransformer
    from transformers import MptConfig, MptForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        v = shape["vision"]
        visual = VisionTransformer(image_size=224, patch_size=14, width=v["width"], layers=v["layers"],
                                   heads=v["heads"], mlp_ratio=4.0, output_dim=768)
        lm = MptForCausalLM(MptConfig(vocab_size=shape["vocab"] - 3, max_seq_len=2048, **shape["lm"]))
        tokenizer = byte_tokenizer()
        add_flamingo_tokens(tokenizer, lm)  # the byte vocabulary is small; the embedding keeps the real size
        lm.resize_token_embeddings(shape["vocab"], mean_resizing=False)
        model = FlamingoModel(visual, lm, tokenizer.convert_tokens_to_ids("<image>"), v["width"], shape["every"])
    return FlamingoAdapter(model.to(dtype), tokenizer, 224)


def time_step(vlm: FlamingoAdapter, batch_size: int, repeats: int) -> float:
    """Seconds per sample of one forward + backward of the loss to the pixels (median of `repeats`)."""
    pixels = torch.rand(batch_size, 3, 224, 224, device=vlm.device)
    loss_fn = vlm.loss_closure(Batch([str(i) for i in range(batch_size)], pixels, [PROMPT] * batch_size, "caption"),
                               [TARGET] * batch_size)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        x = pixels.clone().requires_grad_(True)
        if vlm.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        (grad,) = torch.autograd.grad(loss_fn(x).sum(), x)
        if vlm.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    assert torch.isfinite(grad).all()
    return sorted(times[1:])[len(times[1:]) // 2] / batch_size


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=SHAPES, default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    vlm = build(SHAPES[args.shape], args.device, dtype)
    rows = []
    for size in (int(s) for s in args.batch_sizes.split(",")):
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds = time_step(vlm, size, args.repeats)
        except torch.OutOfMemoryError:
            print(f"batch {size}: out of memory")
            break
        memory = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
        rows.append({"batch": size, "s_per_sample_step": seconds, "peak_GiB": memory})
        print(json.dumps(rows[-1]), flush=True)
    best = min(rows, key=lambda r: r["s_per_sample_step"])
    print(f"batch 1: {rows[0]['s_per_sample_step']:.4f} s per sample-step; best batch {best['batch']}: "
          f"{best['s_per_sample_step']:.4f} s ({rows[0]['s_per_sample_step'] / best['s_per_sample_step']:.1f}x)")


if __name__ == "__main__":
    main()
