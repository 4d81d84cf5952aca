"""The mini world: a synthetic, CPU-sized image-caption world in the real data formats.

`scenes` samples what is in an image, `render` draws it, `language` says it (captions, VQA, class
names), `export` writes it where the real readers expect it, `tokenizers` builds the vocabularies of
the tiny models trained on it by the recipes in `scripts/`.
"""
