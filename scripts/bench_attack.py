"""Benchmark of the batched attack on a LLaVA-shaped model with random weights (cost, not attack quality).

    python scripts/bench_attack.py                                   # CPU: the small LLaVA shape
    python scripts/bench_attack.py --shape llava-7b --device cuda --dtype bf16

Measures, on the toolkit's own loss closure (`LlavaAdapter.loss_closure`) and APGD:
  (a) the time of one APGD iteration over that of a bare forward+backward of the same loss, and APGD's
      own work alone (on a loss that costs nothing) as a share of the bare step;
  (b) sample-iterations per second by batch size, next to a batch-size-1 loop in the reference
      code's style (one image at a time, HF `labels=` loss over full logits, `.backward()`);
  (c) model FLOP/s and utilisation against a peak (989 TFLOP/s dense bf16 for an H100), peak memory
      per batch on CUDA, and the hours the protocol's captioning ensemble (500 samples, up to 600
      APGD iterations each) would take at the best batch and with the reference-style loop.
Each measurement is repeated in --repeats rounds in which the sides take turns (bare step and APGD; the
reference-style loop and each batch size), and reported as min and median: a change of load on the machine
then falls on every side alike, instead of on whichever ran while it lasted. The numbers go into
docs/performance.md; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlm_eval.attacks import ThreatModel, apgd  # noqa: E402
from vlm_eval.attacks.base import evaluate  # noqa: E402
from vlm_eval.contracts import Batch  # noqa: E402
from vlm_eval.vlms.llava.adapter import LlavaAdapter  # noqa: E402
from vlm_eval.vlms.llava.prompts import llava_prompt  # noqa: E402
from vlm_eval.vlms.llava.tiny import SPECIAL_TOKENS, byte_tokenizer  # noqa: E402

# Vision tower, LM and vocabulary sizes. llava-7b is LLaVA-1.5-7B with the robust protocol's
# 224-px ViT-L/14 tower; cpu-small keeps the shapes' kinds (256 image tokens, 32k vocabulary).
SHAPES = {
    "cpu-small": {
        "vision": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "patch_size": 14, "image_size": 224},
        "text": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4,
                 "num_key_value_heads": 4},
        "vocab": 32064,
    },
    "llava-7b": {
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "patch_size": 14, "image_size": 224},
        "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32},
        "vocab": 32064,
    },
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET = "a photo of a small dog sitting on a wooden bench in a park"
ENSEMBLE_SAMPLES, ENSEMBLE_ITERATIONS = 500, 6 * 100  # the captioning protocol's budget per sample (upper bound)


def build_model(shape: dict, device: str, dtype: torch.dtype) -> LlavaAdapter:
    """A random LLaVA-1.5 of the given shape, built directly on the device in its dtype."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, **shape["vision"])
    text = LlamaConfig(vocab_size=shape["vocab"], pad_token_id=0, bos_token_id=1, eos_token_id=2, **shape["text"])
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=SPECIAL_TOKENS.index("<image>"),
                         image_seq_length=(vision.image_size // vision.patch_size) ** 2, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    return LlavaAdapter(model, byte_tokenizer(), mode="robust")


def model_flops(vlm: LlavaAdapter, lm_tokens: int, kept_logits: int) -> float:
    """FLOPs of one sample's forward+backward to the pixels, 2 x 2 x params x tokens: the LM's layers on
    every token, its head on the positions whose logits the loss needs, the vision tower and projector
    on the patches and CLS (input embedding and attention products not counted)."""
    inner = vlm.model.model
    n_vision = sum(p.numel() for m in (inner.vision_tower, inner.multi_modal_projector) for p in m.parameters())
    n_lm = sum(p.numel() for p in inner.language_model.parameters())
    n_layers = n_lm - inner.language_model.embed_tokens.weight.numel()
    n_head = vlm.model.lm_head.weight.numel()
    return 4.0 * (n_layers * lm_tokens + n_head * kept_logits + n_vision * (vlm.n_image_tokens + 1))


def make_batch(vlm: LlavaAdapter, n: int) -> Batch:
    pixels = torch.rand(n, 3, vlm.image_size, vlm.image_size, generator=torch.Generator().manual_seed(n))
    return Batch([str(i) for i in range(n)], pixels.to(vlm.device), [llava_prompt("caption")] * n)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bare_step(vlm: LlavaAdapter, n: int, device: str) -> Callable[[], float]:
    """A timer of one forward+backward of the attack loss to the pixels at batch n, nothing else."""
    batch = make_batch(vlm, n)
    loss_fn = vlm.loss_closure(batch, [TARGET] * n)
    rows = torch.arange(n, device=vlm.device)
    evaluate(loss_fn, batch.pixels, rows, 1.0, 0)  # warm-up
    return lambda: timed(lambda: evaluate(loss_fn, batch.pixels, rows, 1.0, 0), device)


def apgd_iteration(vlm: LlavaAdapter, n: int, steps: int, device: str) -> Callable[[], float]:
    """A timer of seconds per APGD iteration (steps + the starting evaluation) at batch n."""
    batch = make_batch(vlm, n)
    loss_fn = vlm.loss_closure(batch, [TARGET] * n)
    threat = ThreatModel.parse("4/255")
    apgd(loss_fn, batch.pixels, threat, 1, initial_step=1.0)  # warm-up
    return lambda: timed(lambda: apgd(loss_fn, batch.pixels, threat, steps, initial_step=1.0), device) / (steps + 1)


def bookkeeping(vlm: LlavaAdapter, n: int, steps: int, device: str) -> Callable[[], float]:
    """A timer of APGD's own work per iteration (steps, projections, checkpoints, best points) at batch n:
    APGD on a loss that costs next to nothing, a weighted sum of the pixels. On a busy machine the whole
    iteration's time varies by more than this, so it is measured alone."""
    pixels = make_batch(vlm, n).pixels
    weights = torch.rand(pixels.shape[1:], generator=torch.Generator().manual_seed(0)).to(pixels.device)
    threat = ThreatModel.parse("4/255")

    def loss_fn(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (x * weights).flatten(1).sum(1)

    apgd(loss_fn, pixels, threat, 1, initial_step=1.0)  # warm-up
    return lambda: timed(lambda: apgd(loss_fn, pixels, threat, steps, initial_step=1.0), device) / (steps + 1)


def reference_style_loss(vlm: LlavaAdapter):
    """The target's loss of one image as the reference code computes it: the model's own `labels=`
    cross-entropy, over the logits of every position."""
    prompt_ids, target_ids = vlm.target_ids(llava_prompt("caption"), TARGET)
    ids = torch.tensor([prompt_ids + target_ids], device=vlm.device)
    labels = torch.tensor([[-100] * len(prompt_ids) + target_ids], device=vlm.device)
    return lambda x: vlm.model(input_ids=ids, pixel_values=vlm.normalize(x), labels=labels).loss


def reference_style_iteration(vlm: LlavaAdapter, samples: int, steps: int, device: str) -> Callable[[], float]:
    """A timer of seconds per sample-iteration of a batch-size-1 loop as the reference code writes it: one
    image at a time, the full-logits loss, `.backward()`, a sign step."""
    eps, alpha = 4 / 255, 1 / 255
    loss_of = reference_style_loss(vlm)

    def attack_one(x: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        for _ in range(steps + 1):
            x_adv.requires_grad_(True)
            loss = loss_of(x_adv)
            loss.backward()
            with torch.no_grad():
                x_adv = torch.min(torch.max(x_adv + alpha * x_adv.grad.sign(), x - eps), x + eps).clamp(0, 1)
        return x_adv.detach()

    images = make_batch(vlm, samples).pixels
    attack_one(images[:1])  # warm-up
    return lambda: timed(lambda: [attack_one(images[i : i + 1]) for i in range(samples)], device) / (samples * (steps + 1))


def interleaved(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict[str, float]]:
    """Each timer's min and median over `repeats` rounds, the timers taking turns within each round, so that
    a change of load on the machine falls on all of them alike and no ratio compares a busy moment with an idle one."""
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    return {name: {"min": min(t), "median": statistics.median(t), "all": t} for name, t in times.items()}


def peak_memory(vlm: LlavaAdapter, n: int, device: str) -> float | None:
    """GiB at the peak of one attack evaluation at batch n (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.reset_peak_memory_stats()
    batch = make_batch(vlm, n)
    evaluate(vlm.loss_closure(batch, [TARGET] * n), batch.pixels, torch.arange(n, device=vlm.device), 1.0, 0)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=SHAPES, default="cpu-small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--batches", default="1,8,16,32", help="batch sizes of (b), comma-separated")
    p.add_argument("--steps", type=int, default=10, help="APGD steps per measurement")
    p.add_argument("--overhead-batch", type=int, default=8, help="batch of (a)")
    p.add_argument("--repeats", type=int, default=5, help="rounds of measurements, the sides taking turns in each")
    p.add_argument("--reference-samples", type=int, default=2, help="images through the reference-style loop")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense peak for the MFU")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # else fp16 at small batches hits a slow patch-embedding dgrad
    vlm = build_model(SHAPES[args.shape], args.device, DTYPES[args.dtype])
    prompt_ids, target_ids = vlm.target_ids(make_batch(vlm, 1).prompts[0], TARGET)
    flops = model_flops(vlm, len(prompt_ids) + len(target_ids), len(target_ids) + 1)
    print(f"{args.shape} on {args.device} ({args.dtype}, {torch.get_num_threads()} CPU threads): "
          f"{sum(p.numel() for p in vlm.model.parameters()) / 1e6:.1f} M parameters, "
          f"{len(prompt_ids) + len(target_ids)} LM tokens, {flops / 1e12:.4f} TFLOP per sample-iteration; "
          f"{args.repeats} interleaved rounds, min / median")

    overhead = interleaved({"bare": bare_step(vlm, args.overhead_batch, args.device),
                            "apgd": apgd_iteration(vlm, args.overhead_batch, args.steps, args.device),
                            "bookkeeping": bookkeeping(vlm, args.overhead_batch, args.steps, args.device)}, args.repeats)
    bare, iteration, own = overhead["bare"], overhead["apgd"], overhead["bookkeeping"]
    print(f"\n(a) batch {args.overhead_batch}: bare forward+backward {bare['min'] * 1e3:.1f} / "
          f"{bare['median'] * 1e3:.1f} ms, APGD iteration {iteration['min'] * 1e3:.1f} / {iteration['median'] * 1e3:.1f} "
          f"ms, ratio {iteration['min'] / bare['min']:.3f} / {iteration['median'] / bare['median']:.3f}; APGD's own work "
          f"{own['min'] * 1e3:.1f} / {own['median'] * 1e3:.1f} ms, {1 + own['median'] / bare['median']:.3f} of the bare "
          "step (goal <= 1.05)")

    batches = [int(b) for b in args.batches.split(",")]
    timers = {"1, reference style": reference_style_iteration(vlm, args.reference_samples, args.steps, args.device)}
    for n in batches:
        timer = apgd_iteration(vlm, n, args.steps, args.device)
        timers[n] = lambda timer=timer, n=n: timer() / n
    measured = interleaved(timers, args.repeats)
    reference = measured["1, reference style"]["median"]
    print(f"\n(b, c) medians of {args.repeats} rounds\n| batch | ms per sample-iteration (min / median) | "
          f"sample-iterations/s | vs reference style | model TFLOP/s | MFU (of {args.peak_tflops:g} TFLOP/s) | peak GiB | "
          "captioning ensemble, 500 samples, hours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name, times in measured.items():
        t = times["median"]
        row = {"batch": name, "s_per_sample_iteration": t, "min_s": times["min"], "all_s": times["all"],
               "peak_gib": peak_memory(vlm, name, args.device) if isinstance(name, int) else None,
               "tflops": flops / t / 1e12, "mfu": flops / t / (args.peak_tflops * 1e12),
               "ensemble_hours": ENSEMBLE_SAMPLES * ENSEMBLE_ITERATIONS * t / 3600, "speedup": reference / t}
        rows.append(row)
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
        mfu = f"{row['mfu']:.3f}" if args.device.startswith("cuda") else "-"
        print(f"| {name} | {times['min'] * 1e3:.1f} / {t * 1e3:.1f} | {1 / t:.2f} | {row['speedup']:.2f}x | "
              f"{row['tflops']:.3f} | {mfu} | {peak} | {row['ensemble_hours']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "flops": flops,
                                         "overhead": overhead, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
