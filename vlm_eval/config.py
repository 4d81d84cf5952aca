"""The evaluation configuration: one dataclass, filled by the CLI, saved with the results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from vlm_eval.errors import VlmEvalError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
RESOLUTIONS = (224, 336)  # 224: robust-encoder protocol (encoder swapped in); 336: LLaVA's native tower
PROTOCOL_SAMPLES, PROTOCOL_SEED = 500, 42  # the FARE / Sim-CLIP evaluations' subset


@dataclass
class EvalConfig:
    vlm: str = "llava"  # VLM card name or alias
    encoder: str = "openai"  # encoder card name, alias, checkpoint path or hf-hub:org/name
    task: str = "coco"  # task card name or alias
    # seeded subset of the split; None evaluates all of it; "auto": 500, or 25 for a targeted preset (as RobustVLM)
    n_samples: int | str | None = "auto"
    seed: int | None = None  # subset seed; None: 42 (FARE / Sim-CLIP), or a targeted preset's own (RobustVLM)
    batch_size: int = 8
    precision: str = "auto"  # weights' dtype; auto = fp16 on CUDA (as the reference code), fp32 on CPU
    device: str = "auto"  # auto = cuda when available, else cpu
    device_map: str | None = None  # split the VLM over this process's GPUs (transformers' "auto", "balanced", ...)
    resolution: int = 224
    data_root: str | None = None  # folder holding the task's files (default ./data)
    data: dict[str, str] = field(default_factory=dict)  # per-file overrides: card file key -> path
    output_dir: str | None = None  # default results/<task>-<vlm>-<encoder>-<time>
    weights_dir: str | None = None  # extra folder searched for encoder checkpoints
    allow_download: bool = False  # offline unless asked
    strict: bool = False  # fail on a bad sample instead of skipping it
    vqa_normalize: str = "official"  # "official" VQA answer normalisation, or "always" (OpenFlamingo's)
    postprocess: str = "auto"  # answer / caption clean-up: "llava", "openflamingo" (RobustVLM), auto: the VLM's own
    shots: int = 0  # in-context demonstrations for VLMs that take them (OpenFlamingo; 0: its two text-only ones)
    encoder_arch: str = "ViT-L-14-quickgelu"  # architecture of an encoder given as a path
    attack: str = "none"  # none, or a registered attack (pgd, apgd) on the image
    eps: str = "4/255"  # the attack's radius, as written
    norm: str = "linf"  # linf or l2 (any case)
    allow_zero_eps: bool = False  # an attack with eps 0 only on purpose: a no-op check of the pipeline
    steps: int = 100  # attack iterations per sample
    target: str | None = None  # targeted attacks: the string, or a preset name (attacks.vlm.TARGET_PRESETS)
    check_every: int = 0  # targeted: every N steps, samples whose best image says the target stop (0: never)
    schedule: str | None = None  # --attack ensemble: a schedule file (default schedules/<task type>.yaml)
    from_adversarial: str | None = None  # evaluate the adversarial images a run with --attack saved, instead of attacking
    quantize_8bit: bool = False  # round those images to 8 bits first, as a PNG would
    reference_encoder: str | None = None  # semantic checks' reference CLIP (None: the VLM card's; "none": skip)
    sentence_model: str | None = None  # semantic checks' sentence model (None: the VLM card's; "none": skip)
    defense: str = "none"  # a test-time defence (vlm_eval.defenses): ttc, random-noise
    defense_args: dict[str, str] = field(default_factory=dict)  # its settings: key -> value as written
    adaptive: bool = False  # attacks go through the defence (else: computed on the undefended model)
    eot_samples: int = 1  # adaptive: draws of the defence's randomness averaged per attack step
    bootstrap: int = 1000  # resamples of the 95 % bootstrap intervals on every score (0: none)
    threads: int | None = None  # torch's CPU threads (None: the cores this process may run on)
    masked_lm: str | None = None  # --attack text / bimodal: BERT-Attack with this masked LM instead of HotFlip

    def __post_init__(self) -> None:
        if self.attack != "none" and not self.allow_zero_eps and _is_zero(self.eps):
            raise VlmEvalError("--eps 0 makes the attack a no-op: every robust score would equal the clean one. "
                               "For a deliberate no-op check add --allow-zero-eps; else give a radius such as 4/255")
        if self.precision not in PRECISIONS:
            raise VlmEvalError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.resolution not in RESOLUTIONS:
            raise VlmEvalError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        if self.batch_size < 1:
            raise VlmEvalError(f"batch size must be >= 1, got {self.batch_size}")
        if self.threads is not None and (type(self.threads) is not int or self.threads < 1):
            raise VlmEvalError(f"--threads must be a number >= 1, got {self.threads!r}")
        if self.bootstrap < 0:
            raise VlmEvalError(f"--bootstrap must be >= 0 resamples (0: no intervals), got {self.bootstrap}")
        if self.steps < 1:
            raise VlmEvalError(f"--steps must be >= 1, got {self.steps}")
        if self.n_samples not in ("auto", None) and not (type(self.n_samples) is int and self.n_samples >= 1):
            raise VlmEvalError(f"--n-samples must be a number >= 1, 'all' or 'auto', got {self.n_samples!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config_file(path: Path) -> dict[str, Any]:
    """The EvalConfig fields a YAML file (--config) sets."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise VlmEvalError(f"--config {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise VlmEvalError(f"--config {path}: not valid YAML ({exc})") from None
    return config_values(values, f"--config {path}")


def config_values(values: Any, where: str) -> dict[str, Any]:
    """`values` checked as EvalConfig fields: unknown keys and non-mappings refused, naming `where`."""
    if not isinstance(values, dict):
        raise VlmEvalError(f"{where}: expected a mapping of options (encoder: fare4, eps: 4/255, ...)")
    known = [f.name for f in fields(EvalConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise VlmEvalError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for key in ("data", "defense_args"):
        if not isinstance(values.get(key, {}), dict):
            raise VlmEvalError(f"{where}: {key} must be a mapping (key: value)")
    values = dict(values)
    if "eps" in values:
        values["eps"] = str(values["eps"])
    if values.get("n_samples") == "all":
        values["n_samples"] = None
    return values


def resolve_precision(name: str, device: str) -> str:
    """--precision auto: fp16 on a GPU (as the reference code), fp32 on the CPU."""
    if name != "auto":
        return name
    return "fp16" if device.startswith("cuda") else "fp32"


def key_value(text: str, option: str = "--data") -> tuple[str, str]:
    """"KEY=VALUE" of an option such as --data (KEY=PATH) or --defense-arg, split; a clear error otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise VlmEvalError(f"{option} expects KEY=VALUE (for --data, a file key of the task card and a path), "
                           f"got {text!r}")
    return key, value


def _is_zero(eps: str) -> bool:
    """Whether a radius as written is 0 ("0", "0/255", "0.0"); malformed ones are the threat model's to refuse."""
    try:
        return Fraction(str(eps).strip()) == 0
    except (ValueError, ZeroDivisionError):
        return False
