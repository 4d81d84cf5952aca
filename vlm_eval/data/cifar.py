"""CIFAR-10/100's python batches, read without executing pickled code.

The batches are pickles (Python 2, protocol 2) of dicts with bytes keys: b"data" (N x 3072 uint8,
the red, green and blue planes of 32 x 32 images), b"labels" (CIFAR-10) or b"fine_labels"
(CIFAR-100), and a meta file with b"label_names" / b"fine_label_names". A pickle can name any
callable to run; this unpickler admits only what a numpy array needs to be rebuilt, and refuses
every other global, so a tampered file fails instead of running code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from vlm_eval.errors import DataError, MissingResourceError

# the globals a pickled numpy array names (numpy 1 and numpy 2 spellings), and the str -> bytes codec
# Python 3 writes bytes with at protocol 2 (a pure function); nothing else is admitted
ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}
LAYOUTS = {  # batch files, the label key, and the meta file's class-name key
    "cifar10": (("test_batch",), b"labels", "batches.meta", b"label_names"),
    "cifar100": (("test",), b"fine_labels", "meta", b"fine_label_names"),
}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays, lists, dicts and "
                                         "strings may be in a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def load_batch(path: Path) -> dict[bytes, Any]:
    """One pickled batch or meta file, through `ArraysOnlyUnpickler`."""
    if not Path(path).is_file():
        raise MissingResourceError(f"CIFAR file not found: {path}")
    try:
        data = ArraysOnlyUnpickler(io.BytesIO(Path(path).read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return data


def read_cifar(folder: Path) -> tuple[np.ndarray, list[int], list[str]]:
    """(images N x 32 x 32 x 3 uint8, labels, class names) of the test split in `folder`
    (`cifar-10-batches-py/` or `cifar-100-python/`, told apart by their files)."""
    folder = Path(folder)
    kinds = [kind for kind, (batches, *_) in LAYOUTS.items() if (folder / batches[0]).is_file()]
    if not kinds:
        raise MissingResourceError(f"{folder}: neither CIFAR-10's test_batch nor CIFAR-100's test is there; give "
                                   "the extracted cifar-10-batches-py/ or cifar-100-python/ folder")
    batches, label_key, meta_file, names_key = LAYOUTS[kinds[0]]
    meta = load_batch(Path(folder) / meta_file)
    names = [_text(n) for n in _field(meta, names_key, folder / meta_file)]
    images, labels = [], []
    for name in batches:
        batch = load_batch(Path(folder) / name)
        data = np.asarray(_field(batch, b"data", folder / name))
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise DataError(f"{folder / name}: b'data' should be N x 3072 uint8, got {data.shape} {data.dtype}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += [int(y) for y in _field(batch, label_key, folder / name)]
    images = np.concatenate(images)
    if len(labels) != len(images) or not all(0 <= y < len(names) for y in labels):
        raise DataError(f"{folder}: {len(labels)} labels for {len(images)} images, or labels outside 0..{len(names) - 1}")
    return images, labels, names


def _field(data: dict, key: bytes, path: Path) -> Any:
    if key not in data:
        raise DataError(f"{path}: no key {key!r} (has {sorted(data)[:6]})")
    return data[key]


def _text(value: bytes | str) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value)).replace("_", " ")
