"""Reading and writing the small JSON files of a sentence-transformers model directory.

A sentence-transformers directory lists its modules in ``modules.json``; the transformer (or the
StaticEmbedding) may sit at the root (``path: ""``) or in a subfolder such as ``0_Transformer``.

An asymmetric model (sentence-transformers' ``Router``, 5.x and later) has one module at the root,
the Router, whose ``router_config.json`` names the modules of each route ("query", "document") by
their folder: ``types`` maps a folder to its module type, ``structure`` a route to its folders in
order. A folder named in both routes is one module, loaded once and shared by the routes.
``encode_query`` takes the "query" route, ``encode_document`` the "document" one, and plain
``encode`` the ``default_route`` (we write "document").
"""

from __future__ import annotations

import json
from pathlib import Path

from negminer.fileio import atomic_write_json

# module type names understood by sentence-transformers 3.x and 6.x alike (Router: 5.x and 6.x)
TRANSFORMER = "sentence_transformers.models.Transformer"
STATIC = "sentence_transformers.models.StaticEmbedding"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"
ROUTER = "sentence_transformers.models.Router"
ROUTER_CONFIG = "router_config.json"
QUERY, DOCUMENT = "query", "document"  # the routes encode_query / encode_document take


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _is(kind: str, name: str) -> bool:
    return kind.rsplit(".", 1)[-1] == name


def module_dir(path: str | Path, name: str, route: str = DOCUMENT) -> Path | None:
    """The folder of the first module whose type ends with ``name`` (e.g. "Transformer"), or None.
    In a Router model: the last such module of ``route`` (the document route by default, the target
    tower; else the Router's default route), the one that gives that route's embedding."""
    path = Path(path)
    modules = _read(path / "modules.json")
    if not isinstance(modules, list):
        return None
    for m in modules:
        kind, folder = m.get("type", ""), path / m.get("path", "")
        if _is(kind, "Router"):
            cfg = _read(folder / ROUTER_CONFIG) or _read(folder / "config.json") or {}
            structure, types = cfg.get("structure", {}), cfg.get("types", {})
            ids = structure.get(route, structure.get(cfg.get("parameters", {}).get("default_route"), []))
            found = [i for i in ids if _is(types.get(i, ""), name)]
            if found:
                return folder / found[-1]
        elif _is(kind, name):
            return folder
    return None


def write_config(path: Path, normalize: bool) -> None:
    """config_sentence_transformers.json: no prompt for either route (an empty "query" / "document"
    prompt also keeps encode_query / encode_document from falling back to a default prompt)."""
    atomic_write_json(path / "config_sentence_transformers.json",
                      {"model_type": "SentenceTransformer", "prompts": {QUERY: "", DOCUMENT: ""},
                       "default_prompt_name": None, "similarity_fn_name": "cosine" if normalize else "dot"})


def write_modules(path: Path, modules: list[tuple[str, str]], normalize: bool) -> None:
    """modules.json for [(folder, type), ...] (+ Normalize) and config_sentence_transformers.json."""
    if normalize:
        modules = modules + [(f"{len(modules)}_Normalize", NORMALIZE)]
    for folder, _ in modules:
        (path / folder).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "modules.json", [{"idx": i, "name": str(i), "path": folder, "type": kind}
                                       for i, (folder, kind) in enumerate(modules)])
    write_config(path, normalize)


def read_modules(path: Path, prefix: str = "") -> list[tuple[str, str]]:
    """[(folder, type), ...] of a plain (Router-less) directory's modules.json, folders prefixed."""
    return [("/".join(p for p in (prefix, m.get("path", "")) if p), m["type"])
            for m in json.loads((path / "modules.json").read_text(encoding="utf-8"))]


def write_router(path: Path, routes: dict[str, list[tuple[str, str]]], normalize: bool) -> None:
    """A Router model at ``path``: modules.json holds the Router alone; its router_config.json lists
    each route's [(folder, type), ...] (folders relative to ``path``, already written; one folder in
    several routes is one shared module). Plain ``encode`` takes the document route."""
    types: dict[str, str] = {}
    for modules in routes.values():
        for folder, kind in modules:
            if types.setdefault(folder, kind) != kind:
                raise ValueError(f"{folder}: two module types ({types[folder]}, {kind})")
    atomic_write_json(path / ROUTER_CONFIG, {
        "types": types, "structure": {route: [f for f, _ in modules] for route, modules in routes.items()},
        "parameters": {"default_route": DOCUMENT, "allow_empty_key": True, "route_mappings": {}}})
    atomic_write_json(path / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": ROUTER}])
    write_config(path, normalize)
