"""Image loading and LLaVA-1.5-style preprocessing into [0, 1] tensors.

Attacks perturb images in [0, 1] pixel space, so preprocessing stops before the CLIP mean/std
normalisation; the models normalise inside their forward pass (as RobustVLM does by setting
`do_normalize=False` on the processor and normalising in the model).

The geometry follows LLaVA-1.5 (`llava/mm_utils.py`, `process_images` with
`image_aspect_ratio == "pad"`): `expand2square` with the background colour
`tuple(int(x * 255) for x in image_processor.image_mean)` = (122, 116, 104) for the OpenAI CLIP
mean, then `CLIPImageProcessor` (resize the shortest side to `size` with bicubic interpolation,
centre crop `size` x `size`, rescale by 1/255). The resize is PIL's bicubic on the uint8 image,
exactly what the PIL ("slow") CLIPImageProcessor does (transformers 4 default, transformers 5
`CLIPImageProcessorPil`), and what LLaVA-1.5 and RobustVLM were evaluated with. Transformers 5's
default `CLIPImageProcessor` resizes with torchvision on tensors instead, which differed from PIL
by at most one uint8 level in our checks; we do not follow it.

Zero-shot classification uses CLIP's own preprocessing instead (`preprocess_clip_image`): no padding,
the centre crop cuts the long side, with the crop offsets of torchvision's `CenterCrop`, as OpenAI's
`clip.load` and open_clip's `image_transform` do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlm_eval.errors import BadSampleError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# LLaVA's pad colour: the CLIP mean truncated (not rounded) to uint8, i.e. (122, 116, 104).
CLIP_MEAN_RGB: tuple[int, int, int] = tuple(int(x * 255) for x in CLIP_MEAN)  # type: ignore[assignment]


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels (B, 3, H, W) -> CLIP's mean/std-normalised values, on their device and in their dtype."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


def quantize_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """What saving as an 8-bit PNG and loading again does to [0, 1] pixels."""
    return (pixels * 255).round() / 255


def load_image(path: Path, sample_id: str) -> Image.Image:
    """Open an image and fully decode it as RGB.

    The decode is forced here so that truncated or corrupt files fail at load time, as one bad
    sample, rather than later inside a batch. EXIF orientation is not applied (LLaVA does not).

    Raises:
        BadSampleError: The file is missing or cannot be decoded; the message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise BadSampleError(sample_id, f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) on bad data
        raise BadSampleError(sample_id, f"cannot decode image {path}: {type(err).__name__}: {err}") from err


def expand_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad an image to a square with `fill`, the image centred (LLaVA-1.5's `expand2square`).

    The offset of the image is `(long - short) // 2`, as in LLaVA. A square image is returned
    as is (converted to RGB if needed).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), tuple(fill))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def preprocess_image(
    image: Image.Image,
    size: int,
    pad_to_square: bool = True,
    fill: tuple[int, int, int] = CLIP_MEAN_RGB,
) -> torch.Tensor:
    """Turn a PIL image into the un-normalised model input of LLaVA-1.5 / CLIP.

    Args:
        image: Any PIL image; converted to RGB.
        size: Output side (336 for LLaVA-1.5, 224 for OpenFlamingo's ViT-L/14).
        pad_to_square: Pad to a square with `fill` first (LLaVA-1.5); without it, the centre
            crop cuts the long side (plain CLIP / OpenFlamingo).
        fill: Pad colour; LLaVA-1.5 uses the CLIP mean as uint8.

    Returns:
        float32 tensor of shape (3, size, size) with values in [0, 1], NOT mean/std normalised.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if pad_to_square:
        image = expand_to_square(image, fill)
    return _to_tensor(_center_crop(_resize_shortest_side(image, size), size))


def preprocess_clip_image(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP's evaluation preprocessing without the mean/std normalisation: a (3, size, size) [0, 1] tensor.

    Resize the short side to `size` (PIL bicubic) and centre-crop, as torchvision's
    `Resize(size, BICUBIC)` + `CenterCrop(size)` in OpenAI's and open_clip's transforms. It differs
    from `preprocess_image(..., pad_to_square=False)` only in the crop offset: torchvision rounds
    half the excess (Python's round, half to even) where transformers floors it, so for some aspect
    ratios the two crops are one pixel apart.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = _resize_shortest_side(image, size)
    width, height = image.size
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return _to_tensor(image.crop((left, top, left + size, top + size)))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    # float64 multiply then float32, as transformers' rescale does, for bit-identical values.
    array = (np.asarray(image, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the short side is `size`; the long side is truncated like transformers'."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    # PIL returns a plain copy when the size already matches, so such images are unchanged.
    return image.resize(new_size, resample=Image.Resampling.BICUBIC)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """Crop the central `size` x `size` box, flooring the offsets as transformers does."""
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


# The deterministic geometries models take their pixels in, by the name a VLM's `describe()` records
# (so that reports can show the clean image as the model saw it).
GEOMETRIES = {"pad-square": preprocess_image, "center-crop": preprocess_clip_image}
