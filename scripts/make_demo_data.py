"""Write the bundled demo set: 8 drawn images with 5 captions each, in the real COCO formats.

The files (Karpathy-split JSON, COCO-format references, PNG images) go to assets/demo/ and are
committed, so the demo and the CLI tests run the same readers as real COCO. Deterministic.
"""

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "assets" / "demo"
COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40)}
SHAPES = ("circle", "square")


def draw(shape: str, colour: str, background: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, background)
    w, h = size
    box = (w // 2 - h // 4, h // 4, w // 2 + h // 4, 3 * h // 4)
    pen = ImageDraw.Draw(image)
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=COLOURS[colour])
    return image


def captions(shape: str, colour: str) -> list[str]:
    return [
        f"a {colour} {shape}",
        f"a {colour} {shape} in the middle of the picture",
        f"a single {colour} {shape} on a plain background",
        f"there is one {colour} {shape}",
        f"a drawing of a {colour} {shape}",
    ]


def main() -> None:
    rng = random.Random(0)
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    karpathy, images, annotations = [], [], []
    for i, (shape, colour) in enumerate((s, c) for s in SHAPES for c in COLOURS):
        name = f"demo_{i:03d}.png"
        background = tuple(rng.randrange(150, 256) for _ in range(3))
        draw(shape, colour, background, (200, 150)).save(OUT / "images" / name)
        refs = captions(shape, colour)
        karpathy.append({"filepath": "images", "filename": name, "imgid": i, "cocoid": 1000 + i,
                         "split": "test", "sentences": [{"raw": r} for r in refs]})
        images.append({"id": 1000 + i, "file_name": name})
        annotations += [{"id": 10 * i + k, "image_id": 1000 + i, "caption": r} for k, r in enumerate(refs)]
    (OUT / "dataset_demo.json").write_text(json.dumps({"dataset": "demo", "images": karpathy}, indent=1))
    (OUT / "captions_demo.json").write_text(json.dumps({"images": images, "annotations": annotations}, indent=1))


if __name__ == "__main__":
    main()
