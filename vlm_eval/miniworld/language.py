"""What the mini world says about a scene: captions, VQA questions with human-like answers, class names.

Five captions per image are drawn from seven templates (plain list, sizes, positions, both, two
counting forms, a spatial relation), each with its own object order, so references vary in form the
way COCO's do. Each VQA question gets ten answers that mostly agree: a few annotators use a synonym,
another form ("two" for "2"), or get it wrong, as in the VQA data sets.
"""

from __future__ import annotations

import re
from functools import partial

import numpy as np

from vlm_eval.miniworld.scenes import COLORS, REGIONS, SHAPES, Obj, Scene

PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "center": "in the center"}
NUMBERS = {1: "one", 2: "two", 3: "three"}
N_CAPTIONS = 5
N_ANSWERS = 10
# What annotators say instead of the canonical answer: a synonym (counted wrong) or another form (the
# official normalisation turns "two" into "2", so spelled-out numbers count as right).
SYNONYMS = {
    "circle": ["round", "dot"], "square": ["rectangle", "box"], "triangle": ["triangular"], "cross": ["plus", "plus sign"],
    "purple": ["violet"], "orange": ["amber"], "yellow": ["gold"], "center": ["middle"], "left": ["left side"],
    "right": ["right side"], "top": ["up"], "bottom": ["down"], "1": ["one"], "2": ["two"], "3": ["three"],
}
CONFUSIONS = {  # the mistakes a hurried annotator makes
    "red": ["orange"], "orange": ["red", "yellow"], "yellow": ["orange"], "green": ["blue"], "blue": ["purple", "green"],
    "purple": ["blue"], "circle": ["square"], "square": ["circle"], "triangle": ["cross"], "cross": ["square"],
    "left": ["center"], "right": ["center"], "top": ["center"], "bottom": ["center"], "center": ["left", "right"],
    "1": ["2"], "2": ["1", "3"], "3": ["2"], "yes": ["no"], "no": ["yes"],
}
QUESTION_FORMS = {  # every wording a question can take (for the tokenizer's vocabulary)
    "color": "what color is the {shape}?",
    "shape": "what shape is the {color} object?",
    "count": "how many shapes are there?",
    "count_alt": "how many objects are in the picture?",
    "position": "where is the {color} {shape}?",
    "yes/no": "is there {article} {color} {shape}?",
}


def phrase(obj: Obj, size: bool = False, place: bool = False) -> str:
    words = ([obj.size] if size else []) + [obj.color, obj.shape]
    text = f"{article(words[0])} {' '.join(words)}"
    return f"{text} {PLACES[obj.region]}" if place else text


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five different reference captions, each from its own template and object order."""
    forms = [_plain, _sizes, _places, _sizes_places, _count, _there_are, _relation]
    chosen = rng.choice(len(forms), size=N_CAPTIONS, replace=False)
    return [forms[i]([scene.objects[j] for j in rng.permutation(len(scene.objects))]) for i in chosen]


def _plain(objs: list[Obj]) -> str:
    return join([phrase(o) for o in objs])


def _sizes(objs: list[Obj]) -> str:
    return join([phrase(o, size=True) for o in objs])


def _places(objs: list[Obj]) -> str:
    return join([phrase(o, place=True) for o in objs])


def _sizes_places(objs: list[Obj]) -> str:
    return join([phrase(o, size=True, place=True) for o in objs])


def _count(objs: list[Obj]) -> str:
    noun = "shape" if len(objs) == 1 else "shapes"
    return f"{NUMBERS[len(objs)]} {noun}: {_plain(objs)}"


def _there_are(objs: list[Obj]) -> str:
    verb, noun = ("is", "shape") if len(objs) == 1 else ("are", "shapes")
    return f"there {verb} {NUMBERS[len(objs)]} {noun}: {_sizes(objs)}"


def _relation(objs: list[Obj]) -> str:
    if len(objs) == 1:
        return f"a single {objs[0].color} {objs[0].shape}"
    a, b = objs[0], objs[1]
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if abs(dx) >= abs(dy):
        relation = "to the left of" if dx > 0 else "to the right of"
    else:
        relation = "above" if dy > 0 else "below"
    text = f"{phrase(a)} {relation} {phrase(b)}"
    return text + (f", with {phrase(objs[2], place=True)}" if len(objs) == 3 else "")


def questions(scene: Scene, rng: np.random.Generator, n: int = 3) -> list[tuple[str, str, str]]:
    """`n` (question type, question, canonical answer) of different types that the scene answers."""
    candidates = {kind: ask(scene, rng) for kind, ask in _ASKERS.items()}
    valid = [kind for kind, qa in candidates.items() if qa is not None]
    kinds = rng.choice(valid, size=min(n, len(valid)), replace=False)
    return [(str(kind), *candidates[kind]) for kind in kinds]


def _unique(objs: tuple[Obj, ...], key: str) -> list[Obj]:
    values = [getattr(o, key) for o in objs]
    return [o for o in objs if values.count(getattr(o, key)) == 1]


def _ask_by_unique(scene: Scene, rng: np.random.Generator, key: str, kind: str) -> tuple[str, str] | None:
    """Ask for one attribute (`kind`) of an object named by another (`key`) that no other object shares."""
    objs = _unique(scene.objects, key)
    if not objs:
        return None
    obj = objs[rng.integers(len(objs))]
    return QUESTION_FORMS[kind].format(**{key: getattr(obj, key)}), getattr(obj, kind)


def _ask_count(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    form = QUESTION_FORMS["count" if rng.random() < 0.5 else "count_alt"]
    return form, str(len(scene.objects))


def _ask_position(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    kinds = [(o.color, o.shape) for o in scene.objects]
    objs = [o for o in scene.objects if kinds.count((o.color, o.shape)) == 1]
    if not objs:
        return None
    obj = objs[rng.integers(len(objs))]
    return QUESTION_FORMS["position"].format(color=obj.color, shape=obj.shape), obj.region


def _ask_yes_no(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    present = {(o.color, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        color, shape = sorted(present)[rng.integers(len(present))]
        return _is_there(color, shape), "yes"
    # Half of the "no" questions name a colour that is there with a shape that is not, so they test shape.
    colors = sorted({c for c, _ in present}) if rng.random() < 0.5 else list(COLORS)
    absent = [(c, s) for c in colors for s in SHAPES if (c, s) not in present]
    color, shape = absent[rng.integers(len(absent))]
    return _is_there(color, shape), "no"


def _is_there(color: str, shape: str) -> str:
    return QUESTION_FORMS["yes/no"].format(article=article(color), color=color, shape=shape)


_ASKERS = {"color": partial(_ask_by_unique, key="shape", kind="color"),
           "shape": partial(_ask_by_unique, key="color", kind="shape"), "count": _ask_count, "position": _ask_position,
           "yes/no": _ask_yes_no}


def human_answers(answer: str, rng: np.random.Generator) -> list[str]:
    """Ten annotators' answers: mostly the canonical one, some synonyms or other forms, a few mistakes."""
    n_off = int(rng.choice([0, 0, 0, 1, 1, 1, 2, 2, 3, 4]))
    answers = [answer] * (N_ANSWERS - n_off)
    for _ in range(n_off):
        pool = SYNONYMS.get(answer, []) if rng.random() < 0.6 else CONFUSIONS[answer]
        answers.append(pool[rng.integers(len(pool))] if pool else CONFUSIONS[answer][0])
    return [answers[i] for i in rng.permutation(N_ANSWERS)]


def class_name(color: str, shape: str) -> str:
    return f"{color} {shape}"


def fixed_texts() -> list[str]:
    """Every word the world can use, as texts (the tokenizers' vocabularies are built from these)."""
    texts = list(PLACES.values()) + list(NUMBERS.values()) + [re.sub(r"\{\w+\}", " ", q) for q in QUESTION_FORMS.values()]
    texts += list(COLORS) + list(SHAPES) + list(REGIONS) + ["small large shape shapes there is are a an and single with"]
    texts += ["to the left of to the right of above below , : ? yes no 1 2 3"]
    texts += [w for words in SYNONYMS.values() for w in words]
    return texts
