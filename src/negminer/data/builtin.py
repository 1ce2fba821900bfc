"""``builtin:pycode``: code search over the running interpreter's standard library.

query  = first sentence of a public function's or class's docstring
target = its signature and body with the docstring removed (``ast.unparse``, body truncated)

Built with ``ast`` from the stdlib sources (no network), deterministic (files sorted, selection
and split by SHA-1 of the qualified name), capped at 5,000 pairs: 500 test queries, the rest train.
The first build is cached in BEIR layout under ``$NEGMINER_CACHE`` (default ~/.cache/negminer).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from negminer.errors import DataError

BUILTINS = ("pycode",)
MAX_PAIRS, N_TEST, MAX_CHARS = 5000, 500, 1500
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "site-packages", "lib2to3", "ensurepip",
             "pydoc_data", "__pycache__", "dist-packages"}
_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


def cache_dir() -> Path:
    base = Path(os.environ.get("NEGMINER_CACHE", Path.home() / ".cache" / "negminer"))
    return base / "builtin" / f"pycode-py{sys.version_info.major}.{sys.version_info.minor}"


def _first_sentence(doc: str) -> str | None:
    para = doc.strip().split("\n\n")[0]
    para = " ".join(para.split())
    m = _SENTENCE.match(para)
    s = (m.group(1) if m else para).strip()
    if len(s.split()) < 4 or len(s) > 300 or s.startswith((">>>", ":")):
        return None
    return s


def _strip_docstring(node):
    """A copy of ``node`` with its docstring, and those of nested functions and classes, removed."""
    node = ast.parse(ast.unparse(node)).body[0]
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                n.body = n.body[1:] or [ast.Pass()]
    return node


def _items(stdlib: Path):
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in SKIP_DIRS or part.startswith("test") for part in rel.parts[:-1]) or rel.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        stack = [(n, module) for n in tree.body]
        while stack:
            node, prefix = stack.pop(0)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            qual = f"{prefix}.{node.name}"
            if isinstance(node, ast.ClassDef):
                stack.extend((n, qual) for n in node.body)
            doc = ast.get_docstring(node)
            query = _first_sentence(doc) if doc else None
            if query:
                try:
                    code = ast.unparse(_strip_docstring(node))
                except Exception:  # noqa: BLE001 - odd syntax trees are skipped
                    continue
                yield qual, query, code[:MAX_CHARS]


def _h(s: str) -> str:
    return hashlib.sha1(s.encode("utf-8")).hexdigest()


def build_pycode(out: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen_q, seen_t, seen_id, pairs = set(), set(), set(), []
    for qual, query, code in _items(stdlib):
        key_q, key_t = query.lower(), code
        if key_q in seen_q or key_t in seen_t or qual in seen_id:
            continue
        seen_q.add(key_q), seen_t.add(key_t), seen_id.add(qual)
        pairs.append((qual, query, code))
    if len(pairs) < N_TEST * 2:
        raise DataError(stdlib, f"found only {len(pairs)} documented functions in the standard library")
    pairs.sort(key=lambda p: _h("select:" + p[0]))
    pairs = pairs[:MAX_PAIRS]
    test = {p[0] for p in sorted(pairs, key=lambda p: _h("split:" + p[0]))[:N_TEST]}
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        (tmp / "qrels").mkdir()
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as c, open(tmp / "queries.jsonl", "w", encoding="utf-8") as q:
            for qual, query, code in sorted(pairs):
                c.write(json.dumps({"_id": qual, "title": "", "text": code}) + "\n")
                q.write(json.dumps({"_id": "q:" + qual, "text": query}) + "\n")
        for split in ("train", "test"):
            with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
                f.write("query-id\tcorpus-id\tscore\n")
                for qual, _, _ in sorted(pairs):
                    if (qual in test) == (split == "test"):
                        f.write(f"q:{qual}\t{qual}\t1\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_builtin(name: str):
    from negminer.data.beir import load_beir

    if name not in BUILTINS:
        raise DataError(f"builtin:{name}", f"unknown built-in dataset; choose from {', '.join(BUILTINS)}")
    out = cache_dir()
    if not (out / "qrels" / "test.tsv").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        build_pycode(out)
    return load_beir(out, name=f"builtin:{name}")
