"""Checkpoint formats, weight resolution and the encoder cards, on a tiny open_clip ViT."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import save_file

from vlm_eval.cards import EncoderCard, all_cards
from vlm_eval.encoders import ENCODER_FAMILIES
from vlm_eval.encoders.checkpoints import extract_visual_state_dict, read_state_dict
from vlm_eval.encoders.convert import hf_vision_config
from vlm_eval.encoders.openclip_family import (
    build_visual,
    encoder_card_from_spec,
    load_openclip_encoder,
    weights_status,
)
from vlm_eval.errors import CardError, CheckpointError, MissingResourceError

TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
}
REPO = "someorg/robust-clip"


def card(folder: Path, source: dict[str, Any], arch_config: dict | None = TINY) -> EncoderCard:
    """A tiny card as if read from `folder/tiny.yaml` (relative paths resolve against `folder`)."""
    return EncoderCard(name="tiny", family="openclip", arch="tiny", source=source, arch_config=arch_config,
                       card_path=str(folder / "tiny.yaml"))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """Weights unlike any seeded random init, to prove they were loaded."""
    torch.manual_seed(123)
    visual = build_visual(card(Path("."), {"random": 0}))
    return {k: (v + 0.5).clone() for k, v in visual.state_dict().items()}


def full_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    text = {"token_embedding.weight": torch.randn(64, 32), "logit_scale": torch.tensor(4.6)}
    return {**{f"visual.{k}": v for k, v in sd.items()}, **text}


LAYOUTS: dict[str, tuple[str, Callable[[dict], dict]]] = {
    "raw.pt": ("raw_visual", lambda sd: sd),
    "tecoa.pt": ("vision_encoder_state_dict", lambda sd: {"vision_encoder_state_dict": sd, "epoch": 10}),
    "full.pt": ("open_clip_full", full_clip),
    "full.safetensors": ("open_clip_full", full_clip),
    "ddp.pt": ("raw_visual", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
    "train.pt": ("open_clip_full", lambda sd: {"epoch": 2, "name": "run",
                                               "state_dict": {f"module.{k}": v for k, v in full_clip(sd).items()}}),
}


def write(path: Path, obj: dict) -> Path:
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize("auto", [False, True], ids=["explicit", "auto"])
@pytest.mark.parametrize("filename", list(LAYOUTS))
def test_every_format_loads_the_saved_weights(tmp_path: Path, reference: dict, filename: str, auto: bool) -> None:
    fmt, layout = LAYOUTS[filename]
    path = write(tmp_path / filename, layout(reference))
    encoder = load_openclip_encoder(card(tmp_path, {"path": filename, "format": "auto" if auto else fmt}))
    loaded = encoder.visual.state_dict()
    assert loaded.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(loaded[key], value), key
    assert encoder.checkpoint == str(path)
    assert encoder.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert encoder.quick_gelu and encoder.image_size == 224
    assert not encoder.visual.training and not any(p.requires_grad for p in encoder.visual.parameters())


def test_half_precision_checkpoint_is_loaded_as_fp32(tmp_path: Path, reference: dict) -> None:
    write(tmp_path / "half.safetensors", {k: v.half() for k, v in reference.items()})
    encoder = load_openclip_encoder(card(tmp_path, {"path": str(tmp_path / "half.safetensors")}))
    assert {p.dtype for p in encoder.visual.parameters()} == {torch.float32}
    assert torch.equal(encoder.visual.conv1.weight, reference["conv1.weight"].half().float())


def test_random_source_is_seeded(tmp_path: Path) -> None:
    a, b, c = (load_openclip_encoder(card(tmp_path, {"random": s})).visual for s in (0, 0, 1))
    assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)
    encoder = load_openclip_encoder(card(tmp_path, {"random": 0}))
    assert encoder.checkpoint is None and encoder.sha256 is None


def test_mismatched_keys_are_listed(tmp_path: Path, reference: dict) -> None:
    bad = dict(reference)
    bad["conv1.weights"] = bad.pop("conv1.weight")  # renamed: one missing, one unexpected
    del bad["ln_post.bias"]
    bad["proj"] = torch.zeros(64, 16)  # wrong shape
    write(tmp_path / "bad.pt", bad)
    with pytest.raises(CheckpointError) as info:
        load_openclip_encoder(card(tmp_path, {"path": "bad.pt", "format": "raw_visual"}))
    message = str(info.value)
    for expected in ("bad.pt", "conv1.weight", "ln_post.bias", "conv1.weights", "proj", "(64, 16)", "(64, 32)"):
        assert expected in message


def test_full_checkpoint_given_as_raw_visual_gets_a_hint(tmp_path: Path, reference: dict) -> None:
    write(tmp_path / "full.pt", full_clip(reference))
    with pytest.raises(CheckpointError, match="open_clip_full"):
        load_openclip_encoder(card(tmp_path, {"path": "full.pt", "format": "raw_visual"}))


def test_layer_scale_checkpoint_gets_a_hint(tmp_path: Path, reference: dict) -> None:
    write(tmp_path / "ls.pt", {**reference, "transformer.resblocks.0.ls_1.gamma": torch.ones(64)})
    with pytest.raises(CheckpointError, match="layer scale"):
        load_openclip_encoder(card(tmp_path, {"path": "ls.pt", "format": "auto"}))


class NotATensor:
    """A pickled object that weights_only loading must refuse."""


def test_unsafe_or_unreadable_files_are_refused(tmp_path: Path) -> None:
    torch.save({"conv1.weight": NotATensor()}, tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match="object.pt"):
        read_state_dict(tmp_path / "object.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(tmp_path / "list.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(MissingResourceError, match="absent.pt"):
        read_state_dict(tmp_path / "absent.pt")


def test_format_errors() -> None:
    with pytest.raises(CheckpointError, match="transformers"):
        extract_visual_state_dict({"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)}, "auto")
    with pytest.raises(CheckpointError, match="visual"):
        extract_visual_state_dict({"conv1.weight": torch.zeros(1)}, "open_clip_full")
    with pytest.raises(CheckpointError, match="vision_encoder_state_dict"):
        extract_visual_state_dict({"conv1.weight": torch.zeros(1)}, "vision_encoder_state_dict")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        extract_visual_state_dict({}, "pickle")


def hub_source(**extra: Any) -> dict[str, Any]:
    return {"hf_hub": REPO, "filenames": ["model.safetensors", "model.bin"], "format": "auto", **extra}


def test_missing_hub_file_says_where_it_looked_and_how_to_get_it(tmp_path: Path, empty_hub_cache: Path) -> None:
    weights_dir = tmp_path / "weights"
    source = hub_source(alternatives="the raw visual .pt of the paper's release")
    with pytest.raises(MissingResourceError) as info:
        load_openclip_encoder(card(tmp_path, source), weights_dir=weights_dir)
    message = str(info.value)
    for expected in (
        "tiny",
        REPO,
        str(weights_dir / "someorg--robust-clip" / "model.safetensors"),
        str(weights_dir / "model.bin"),
        str(empty_hub_cache),
        f"hf download {REPO} model.safetensors",
        "--allow-download",
        "the raw visual .pt of the paper's release",
    ):
        assert expected in message
    present, where = weights_status(card(tmp_path, source), weights_dir)
    assert not present and f"hf download {REPO}" in where


@pytest.mark.parametrize("relative", ["someorg--robust-clip/model.bin", "model.safetensors"])
def test_hub_file_found_in_weights_dir(tmp_path: Path, empty_hub_cache: Path, reference: dict, relative: str) -> None:
    weights_dir = tmp_path / "weights"
    path = weights_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, reference if path.suffix == ".safetensors" else full_clip(reference))
    encoder = load_openclip_encoder(card(tmp_path, hub_source()), weights_dir=weights_dir)
    assert encoder.checkpoint == str(path)
    assert torch.equal(encoder.visual.proj, reference["proj"])
    assert weights_status(card(tmp_path, hub_source()), weights_dir) == (True, str(path))


def test_hub_file_found_in_hf_cache(tmp_path: Path, empty_hub_cache: Path, reference: dict) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = empty_hub_cache / f"models--{REPO.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    write(snapshot / "model.bin", full_clip(reference))  # only the second filename is present
    encoder = load_openclip_encoder(card(tmp_path, hub_source()))
    assert Path(encoder.checkpoint).name == "model.bin"
    assert torch.equal(encoder.visual.class_embedding, reference["class_embedding"])
    present, where = weights_status(card(tmp_path, hub_source()))
    assert present and where.endswith("model.bin")


def test_weights_status_for_random_and_paths(tmp_path: Path) -> None:
    assert weights_status(card(tmp_path, {"random": 3}))[0]
    assert weights_status(card(tmp_path, {"path": "w.pt"})) == (False, f"missing {tmp_path / 'w.pt'}")
    (tmp_path / "w.pt").write_bytes(b"")
    assert weights_status(card(tmp_path, {"path": "w.pt"})) == (True, str(tmp_path / "w.pt"))
    assert not weights_status(card(tmp_path, {"random": 0, "path": "w.pt"}))[0]  # ambiguous source
    with pytest.raises(MissingResourceError, match="absent.pt"):
        load_openclip_encoder(card(tmp_path, {"path": "absent.pt"}))


def test_listing_imports_neither_torch_nor_open_clip() -> None:
    code = (
        "import sys\n"
        "from vlm_eval.cards import all_cards\n"
        "from vlm_eval.encoders import ENCODER_FAMILIES\n"
        "from vlm_eval.encoders.openclip_family import weights_status\n"
        "for c in all_cards('encoders').values(): weights_status(c)\n"
        "assert 'openclip' in ENCODER_FAMILIES.names()\n"
        "heavy = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_family_registry_resolves_lazily() -> None:
    from vlm_eval.encoders.openclip_family import FAMILY

    assert ENCODER_FAMILIES.get("openclip") is FAMILY


def test_encoder_card_from_spec(tmp_path: Path) -> None:
    (tmp_path / "fare_eps_4.pt").write_bytes(b"")
    local = encoder_card_from_spec(str(tmp_path / "fare_eps_4.pt"))
    assert local.source == {"path": str((tmp_path / "fare_eps_4.pt").resolve()), "format": "auto"}
    assert (local.family, local.arch) == ("openclip", "ViT-L-14-quickgelu")
    hub = encoder_card_from_spec("hf-hub:chs20/fare4-clip", arch="ViT-B-32")
    assert hub.source["hf_hub"] == "chs20/fare4-clip" and hub.source["format"] == "open_clip_full"
    assert hub.source["filenames"][0] == "open_clip_model.safetensors" and hub.arch == "ViT-B-32"
    assert encoder_card_from_spec("fare4") is None
    with pytest.raises(CardError):
        encoder_card_from_spec("hf-hub:no-org")


def test_bad_cards_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="exactly one"):
        load_openclip_encoder(card(tmp_path, {"url": "http://x"}))
    with pytest.raises(CardError, match="unknown open_clip arch"):
        load_openclip_encoder(EncoderCard(name="x", family="openclip", arch="ViT-Z-99", source={"random": 0}))
    with pytest.raises(CardError, match="image_size"):
        load_openclip_encoder(EncoderCard(name="x", family="openclip", arch="t", source={"random": 0},
                                          arch_config=TINY, image_size=336))


_BUILT: dict[str, torch.nn.Module] = {}


def test_every_card_parses_and_builds() -> None:
    """Each distinct architecture is built once, on the meta device (shapes only, no 300M-param init)."""
    cards = all_cards("encoders")
    assert cards, "no encoder cards found"
    for name, encoder_card in cards.items():
        assert encoder_card.family in ENCODER_FAMILIES, name
        key = json.dumps([encoder_card.arch, encoder_card.arch_config], sort_keys=True)
        if key not in _BUILT:
            with torch.device("meta"):
                _BUILT[key] = build_visual(encoder_card)
        config = hf_vision_config(_BUILT[key])  # convertible for LLaVA
        assert config.image_size == encoder_card.image_size, name
