"""A tiny BEIR-layout dataset written on the fly, for tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
THINGS = ["car", "house", "bird", "boat", "chair", "lamp", "book", "shoe", "kite", "cup"]
PLACES = ["garden", "kitchen", "harbour", "office", "forest", "school"]
# queries use other words than the targets, so that a tower has something to learn
SYN = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden", "black": "ebony",
       "white": "ivory", "purple": "violet", "orange": "amber", "car": "automobile", "house": "dwelling",
       "bird": "sparrow", "boat": "vessel", "chair": "seat", "lamp": "lantern", "book": "volume",
       "shoe": "boot", "kite": "glider", "cup": "mug", "garden": "yard", "kitchen": "galley", "harbour": "port",
       "office": "bureau", "forest": "woods", "school": "academy"}


def write_tiny_beir(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """A small real-text retrieval task: a description -> the sentence about that object."""
    rng = random.Random(seed)
    combos = [(c, t, p) for c in COLOURS for t in THINGS for p in PLACES]
    rng.shuffle(combos)
    combos = combos[: n_train + n_test]
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, (c, t, p) in enumerate(combos):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"A {c} {t} stands in the {p}, number {i}."}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i, (c, t, p) in enumerate(combos):
            f.write(json.dumps({"_id": f"q{i}", "text": f"the {SYN[c]} {SYN[t]} in the {SYN[p]}"}) + "\n")
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        with open(root / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for i in rows:
                f.write(f"q{i}\td{i}\t1\n")
    return root


def write_tiny_multilabel(root: Path, seed: int = 0) -> Path:
    """A small multi-label task: 'the <colour> <thing>' (in synonyms) -> every sentence about a thing of that
    colour and kind (1-6 positives, skewed), split by query."""
    rng = random.Random(seed)
    combos = [(c, t, p) for c in COLOURS for t in THINGS for p in PLACES if rng.random() < 0.55]
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, (c, t, p) in enumerate(combos):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": f"A {c} {t} stands in the {p}, number {i}."}) + "\n")
    groups: dict = {}
    for i, (c, t, _) in enumerate(combos):
        groups.setdefault((c, t), []).append(i)
    keys = sorted(groups)
    rng.shuffle(keys)
    with open(root / "queries.jsonl", "w") as f:
        for j, (c, t) in enumerate(keys):
            f.write(json.dumps({"_id": f"q{j}", "text": f"the {SYN[c]} {SYN[t]}"}) + "\n")
    n_test = len(keys) // 5
    for split, part in (("test", range(n_test)), ("train", range(n_test, len(keys)))):
        with open(root / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for j in part:
                for i in groups[keys[j]]:
                    f.write(f"q{j}\td{i}\t1\n")
    return root
