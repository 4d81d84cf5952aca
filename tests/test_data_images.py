"""Image loading errors and LLaVA-1.5 preprocessing (pad with the CLIP mean, bicubic, crop, [0, 1])."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from vlm_eval.data import CLIP_MEAN, CLIP_MEAN_RGB, expand_to_square, load_image, preprocess_image
from vlm_eval.errors import BadSampleError


def _noise(width, height, seed=0):
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_load_png_and_grayscale_jpeg_as_rgb(tmp_path):
    _noise(8, 6).save(tmp_path / "a.png")
    Image.new("L", (5, 4), 77).save(tmp_path / "b.jpg")
    png = load_image(tmp_path / "a.png", "a")
    assert png.mode == "RGB" and png.size == (8, 6)
    assert np.array_equal(np.asarray(png), np.asarray(_noise(8, 6)))
    gray = load_image(tmp_path / "b.jpg", "b")
    assert gray.mode == "RGB" and gray.size == (5, 4)


def test_missing_image(tmp_path):
    path = tmp_path / "COCO_val2014_000000391895.jpg"
    with pytest.raises(BadSampleError, match="not found") as info:
        load_image(path, "391895")
    assert str(path) in str(info.value) and info.value.sample_id == "391895"


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(BadSampleError, match="cannot decode") as info:
        load_image(path, "7")
    assert str(path) in str(info.value)


def test_truncated_jpeg_is_caught_by_the_forced_decode(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)  # PIL's default
    buffer = io.BytesIO()
    _noise(64, 64).save(buffer, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadSampleError) as info:
        load_image(path, "8")
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_pad_colour_is_llava_clip_mean():
    assert CLIP_MEAN_RGB == (122, 116, 104)
    assert CLIP_MEAN_RGB == tuple(int(x * 255) for x in CLIP_MEAN)


def test_expand_to_square_centres_the_image():
    wide = Image.new("RGB", (6, 3), (255, 0, 0))
    square = expand_to_square(wide, (1, 2, 3))
    assert square.size == (6, 6)
    pixels = np.asarray(square)
    # (6 - 3) // 2 = 1 row of padding above, 2 below, as LLaVA's expand2square.
    assert (pixels[0] == (1, 2, 3)).all() and (pixels[4:] == (1, 2, 3)).all()
    assert (pixels[1:4] == (255, 0, 0)).all()
    tall = expand_to_square(Image.new("RGB", (2, 5), (0, 255, 0)), (9, 9, 9))
    assert np.asarray(tall)[:, 1:3].tolist() == [[[0, 255, 0]] * 2] * 5


def test_output_shape_dtype_range():
    out = preprocess_image(_noise(40, 25), 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_non_square_image_is_padded_with_the_mean_colour():
    out = preprocess_image(Image.new("RGB", (40, 10), (255, 255, 255)), 20)
    # Padding fills the top and bottom 15 of 40 rows; the top-left corner stays the pad colour.
    expected = torch.tensor(CLIP_MEAN_RGB, dtype=torch.float32) / 255
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-6)
    assert torch.allclose(out[:, 10, 10], torch.ones(3))


def test_without_padding_the_long_side_is_cropped():
    image = Image.new("RGB", (40, 10), (255, 255, 255))
    out = preprocess_image(image, 10, pad_to_square=False)
    assert out.shape == (3, 10, 10) and torch.allclose(out, torch.ones_like(out))


def test_square_image_of_target_size_is_unchanged():
    image = _noise(16, 16, seed=3)
    out = preprocess_image(image, 16)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.allclose(out, expected, atol=1e-6)


def test_deterministic():
    image = _noise(33, 21, seed=5)
    assert torch.equal(preprocess_image(image, 24), preprocess_image(image, 24))


@pytest.mark.parametrize("size_wh", [(50, 80), (81, 37), (336, 336)])
def test_matches_llava_pipeline_with_pil_clip_processor(size_wh):
    """expand2square + transformers' PIL CLIPImageProcessor (no normalisation), bit for bit."""
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_normalize=False
    )
    image = _noise(*size_wh, seed=1)
    expected = processor(expand_to_square(image, CLIP_MEAN_RGB), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(preprocess_image(image, 336), expected)
    unpadded = processor(image, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(preprocess_image(image, 336, pad_to_square=False), unpadded)
