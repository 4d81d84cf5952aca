"""No silent numbers: NaN or infinite weights are refused at load, NaN logits stop a run (issue 20, item 1)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlm_eval import cards
from vlm_eval.cli import main
from vlm_eval.errors import NonFiniteWeightsError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"


def poisoned(source: Path, target: Path, name: str | None = None, value: float = float("nan")) -> str:
    """A copy of a safetensors file with one value of one tensor (`name`, else the last float one) set to
    `value`; the tensor's name."""
    tensors = load_file(str(source))
    name = name or [k for k, t in tensors.items() if t.is_floating_point()][-1]
    tensors[name].view(-1)[0] = value
    save_file(tensors, str(target))
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_encoder_checkpoint_with_a_non_finite_weight_is_refused_by_name(tmp_path, value):
    from vlm_eval.encoders.openclip_family import load_openclip_encoder

    name = poisoned(ASSETS / "mini-clip.safetensors", tmp_path / "broken.safetensors", value=value)
    card = cards.load_card("encoders", "mini-clip")
    broken = dataclasses.replace(card, source={**card.source, "path": str(tmp_path / "broken.safetensors")})
    tower_key = name.removeprefix("visual.")  # keys as the vision tower names them
    with pytest.raises(NonFiniteWeightsError, match=rf"broken.safetensors \(encoder mini-clip\): tensor '{tower_key}' holds 1 NaN"):
        load_openclip_encoder(broken)


def test_a_vlm_folder_with_a_nan_weight_is_refused_by_name(tmp_path):
    from vlm_eval.vlms.llava.load import load_llava

    folder = Path(shutil.copytree(ASSETS / "mini-llava", tmp_path / "mini-llava"))
    poisoned(folder / "model.safetensors", folder / "model.safetensors", "multi_modal_projector.linear_1.weight")
    card = dataclasses.replace(cards.load_card("vlms", "mini-llava"), path=str(folder))
    with pytest.raises(NonFiniteWeightsError,
                       match=rf"VLM 'mini-llava' \({folder}\): tensor '[\w.]*multi_modal_projector.linear_1.weight'"):
        load_llava(card, None, torch.float32, "cpu")


def test_a_flamingo_checkpoint_with_a_nan_weight_is_refused_by_name(tmp_path):
    from vlm_eval.vlms.openflamingo.load import load_openflamingo

    folder = Path(shutil.copytree(ASSETS / "mini-openflamingo", tmp_path / "mini-openflamingo"))
    name = poisoned(folder / "checkpoint.safetensors", folder / "checkpoint.safetensors")
    card = dataclasses.replace(cards.load_card("vlms", "mini-openflamingo"), path=str(folder))
    with pytest.raises(NonFiniteWeightsError, match=rf"checkpoint.safetensors: tensor '{name}'"):
        load_openflamingo(card, None, torch.float32, "cpu")


@pytest.mark.slow  # a mini-LLaVA run
def test_nan_logits_stop_the_run_and_keep_the_finished_batches(tmp_path, monkeypatch, capsys):
    from vlm_eval.vlms.llava import load as llava_load

    real = llava_load.load_llava

    def load_then_break_the_head_from_the_second_batch(*args, **kwargs):
        adapter, batches = real(*args, **kwargs), []
        generate = adapter.generate
        adapter.generate = lambda batch, tokens: batches.append(1) or generate(batch, tokens)
        adapter.model.get_output_embeddings().register_forward_hook(
            lambda module, inputs, out: torch.full_like(out, float("nan")) if len(batches) > 1 else out)
        return adapter

    monkeypatch.setattr(llava_load, "load_llava", load_then_break_the_head_from_the_second_batch)
    out = tmp_path / "run"
    argv = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "demo", "--n-samples", "all",
            "--batch-size", "4", "--output-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the VLM's logits became NaN or infinite on the batch of samples" in err and "check the model" in err
    kept = [line for path in (out / "shards").rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(kept) == 4 and not (out / "summary.json").exists()  # the first batch, and no score


@pytest.mark.slow  # a mini-world zero-shot run
def test_nan_logits_of_a_zero_shot_classifier_stop_the_run(tmp_path, monkeypatch, capsys):
    from vlm_eval.encoders.zeroshot import ZeroShotClassifier

    real = ZeroShotClassifier.__call__
    calls = []

    def second_batch_nan(self, pixels):
        calls.append(1)
        logits = real(self, pixels)
        return torch.full_like(logits, float("nan")) if len(calls) > 1 else logits

    monkeypatch.setattr(ZeroShotClassifier, "__call__", second_batch_nan)
    argv = ["--encoder", "mini-clip", "--task", "mini-zeroshot", "--n-samples", "16", "--batch-size", "8",
            "--precision", "bf16", "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the zero-shot classifier's logits became NaN or infinite" in err
    assert "rerun with --precision fp32" in err  # the advice follows the weights' bf16, not the fp32 logits


class Payload:
    """A pickle that would run a command when unpickled without weights_only: it creates `witness`."""

    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.witness}",)


def witness_of(folder: Path) -> Path:
    return folder.parent / "payload-ran"


def break_folder(folder: Path, how: str) -> None:
    if how == "pickle":
        import pickle

        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": Payload(witness_of(folder))}))
    elif how == "no config":
        (folder / "config.json").unlink()
    elif how == "corrupt config":
        (folder / "config.json").write_text("{not json")
    elif how == "config of another size":
        config = json.loads((folder / "config.json").read_text())
        config["text_config"]["hidden_size"] *= 2
        (folder / "config.json").write_text(json.dumps(config))
    elif how == "no tokenizer":
        (folder / "tokenizer.json").unlink()
    elif how == "no weights":
        (folder / "model.safetensors").unlink()
    elif how == "corrupt weights":
        (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 10)


@pytest.mark.parametrize("how, says", [
    ("pickle", "a pickle holding more than tensors"),
    ("no config", "has no config.json"),
    ("corrupt config", "config.json is not valid JSON"),
    ("config of another size", "the weights' shapes do not fit config.json"),
    ("no tokenizer", "holds no tokenizer"),
    ("no weights", "holds no weights"),
    ("corrupt weights", "SafetensorError"),
])
def test_a_broken_vlm_folder_is_a_clear_error_naming_it(how, says, tmp_path, monkeypatch, capsys):
    folder = Path(shutil.copytree(ASSETS / "mini-llava", tmp_path / "mini-llava"))
    break_folder(folder, how)
    card = dataclasses.replace(cards.load_card("vlms", "mini-llava"), path=str(folder))
    real = cards.load_card
    monkeypatch.setattr(cards, "load_card", lambda kind, name: card if name == "mini-llava" else real(kind, name))
    argv = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "demo", "--n-samples", "2",
            "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the CLI's one-line error, no traceback after it
    assert last.startswith("error: ") and says in last and str(folder) in last
    assert not witness_of(folder).exists()  # the payload never ran


def test_the_advice_follows_the_precision():
    from vlm_eval.errors import NonFiniteOutputError

    advice = {dtype: str(NonFiniteOutputError("logits", [str(i) for i in range(5)], dtype))
              for dtype in ("torch.float16", "torch.bfloat16", "torch.float32")}
    assert "bf16 or fp32" in advice["torch.float16"] and "0, 1, 2, ... (5 in all)" in advice["torch.float16"]
    assert "--precision fp32" in advice["torch.bfloat16"] and "check the model's weights" in advice["torch.float32"]
