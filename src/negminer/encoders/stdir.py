"""Reading and writing the small JSON files of a sentence-transformers model directory.

A sentence-transformers directory lists its modules in ``modules.json``; the transformer (or the
StaticEmbedding) may sit at the root (``path: ""``) or in a subfolder such as ``0_Transformer``.
"""

from __future__ import annotations

import json
from pathlib import Path

from negminer.fileio import atomic_write_json

# module type names understood by sentence-transformers 3.x and 6.x alike
TRANSFORMER = "sentence_transformers.models.Transformer"
STATIC = "sentence_transformers.models.StaticEmbedding"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"


def module_dir(path: str | Path, name: str) -> Path | None:
    """The folder of the first module whose type ends with ``name`` (e.g. "Transformer"), or None."""
    modules = Path(path) / "modules.json"
    if not modules.is_file():
        return None
    for m in json.loads(modules.read_text(encoding="utf-8")):
        if m.get("type", "").rsplit(".", 1)[-1] == name:
            return Path(path) / m.get("path", "")
    return None


def write_modules(path: Path, modules: list[tuple[str, str]], normalize: bool) -> None:
    """modules.json for [(folder, type), ...] (+ Normalize) and config_sentence_transformers.json."""
    if normalize:
        modules = modules + [(f"{len(modules)}_Normalize", NORMALIZE)]
    for folder, _ in modules:
        (path / folder).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "modules.json", [{"idx": i, "name": str(i), "path": folder, "type": kind}
                                       for i, (folder, kind) in enumerate(modules)])
    atomic_write_json(path / "config_sentence_transformers.json",
               {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine" if normalize else "dot"})
