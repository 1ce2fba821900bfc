"""``builtin:pycode``: code search over the running interpreter's standard library.

query  = first sentence of a public function's or class's docstring
target = its signature and body with the docstring removed (``ast.unparse``, body truncated)

Built with ``ast`` from the stdlib sources (no network), deterministic (files sorted, selection
and split by SHA-1 of the qualified name), capped at 5,000 pairs: 500 test queries, the rest train.
The first build (a few seconds) is cached in BEIR layout, written atomically, under
``$NEGMINER_CACHE/builtin/pycode-<python version>`` (default ``~/.cache/negminer``); later loads read it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

from negminer.fileio import fsync_dir, fsync_tree
from negminer.errors import DataError

BUILTINS = ("pycode",)
MAX_PAIRS, N_TEST, MAX_CHARS = 5000, 500, 1500
SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "site-packages", "lib2to3", "ensurepip",
             "pydoc_data", "__pycache__", "dist-packages"}
_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


FORMAT = 2  # bump when the build changes: older caches are rebuilt
STAMP = "negminer-builtin.json"


def cache_dir() -> Path:
    """``$NEGMINER_CACHE/builtin/pycode-<python version>`` (default ``~/.cache/negminer``)."""
    base = Path(os.environ.get("NEGMINER_CACHE") or Path.home() / ".cache" / "negminer")
    return base / "builtin" / f"pycode-{platform.python_version()}"


def _stamp() -> dict:
    return {"name": "pycode", "format": FORMAT, "python": sys.version}


def _cached(out: Path) -> bool:
    try:
        return json.loads((out / STAMP).read_text(encoding="utf-8")) == _stamp()
    except (OSError, ValueError):
        return False


def _first_sentence(doc: str) -> str | None:
    para = doc.strip().split("\n\n")[0]
    para = " ".join(para.split())
    m = _SENTENCE.match(para)
    s = (m.group(1) if m else para).strip()
    if len(s.split()) < 4 or len(s) > 300 or s.startswith((">>>", ":")):
        return None
    return s


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _strip_docstrings(stmts: list) -> None:
    """Remove, in place, the docstring of every function and class among ``stmts`` and nested blocks
    (defs only occur in statement lists, so expressions are not walked)."""
    for n in stmts:
        if isinstance(n, _DEFS) and n.body:
            first = n.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                n.body = n.body[1:] or [ast.Pass()]
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            sub = getattr(n, name, None)
            if isinstance(sub, list):
                _strip_docstrings(sub)


def _code(node) -> str:
    """Signature (with decorators) and body, unparsing statements only until MAX_CHARS is reached."""
    body, node.body = node.body, [ast.Pass()]
    try:
        head = ast.unparse(node).rsplit("\n", 1)[0]  # drop the placeholder "    pass"
    finally:
        node.body = body
    parts, size = [head], len(head)
    for stmt in body:
        if size >= MAX_CHARS:
            break
        parts.append(textwrap.indent(ast.unparse(stmt), "    "))
        size += len(parts[-1]) + 1
    return "\n".join(parts)[:MAX_CHARS]


def _sources(stdlib: Path) -> list[Path]:
    """The stdlib's .py files, sorted, without tests, GUI code and installed packages."""
    out = []
    for d, dirs, files in os.walk(stdlib):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith("test")]
        out += [Path(d) / f for f in files if f.endswith(".py") and not f.startswith("test")]
    return sorted(out)


def _items(stdlib: Path):
    """(qualified name, query, code) of every documented public function, method and class."""
    for path in _sources(stdlib):
        rel = path.relative_to(stdlib)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        found, stack = [], [(n, module) for n in tree.body]
        while stack:  # breadth first: module level, then class members
            node, prefix = stack.pop(0)
            if not isinstance(node, _DEFS) or node.name.startswith("_"):
                continue
            qual = f"{prefix}.{node.name}"
            if isinstance(node, ast.ClassDef):
                stack.extend((n, qual) for n in node.body)
            doc = ast.get_docstring(node)
            query = _first_sentence(doc) if doc else None
            if query:
                found.append((qual, query, node))
        _strip_docstrings(tree.body)  # after reading them all: nested docstrings must not leak into targets
        for qual, query, node in found:
            try:
                yield qual, query, _code(node)
            except Exception:  # noqa: BLE001 - odd syntax trees are skipped
                continue


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
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as c, \
                open(tmp / "queries.jsonl", "w", encoding="utf-8") as q:
            for qual, query, code in sorted(pairs):
                c.write(json.dumps({"_id": qual, "title": "", "text": code}) + "\n")
                q.write(json.dumps({"_id": "q:" + qual, "text": query}) + "\n")
        for split in ("train", "test"):
            with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
                f.write("query-id\tcorpus-id\tscore\n")
                for qual, _, _ in sorted(pairs):
                    if (qual in test) == (split == "test"):
                        f.write(f"q:{qual}\t{qual}\t1\n")
        (tmp / STAMP).write_text(json.dumps(_stamp()), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private
        fsync_tree(tmp)
        if out.exists() and not _cached(out):  # stale or broken: move it aside, then drop it
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-old-"))
            os.replace(out, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out)  # atomic: readers see the whole folder or none
            fsync_dir(out.parent)
        except OSError:
            if not _cached(out):  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_builtin(name: str):
    from negminer.data.beir import load_beir

    if name not in BUILTINS:
        raise DataError(f"builtin:{name}", f"unknown built-in dataset; choose from {', '.join(BUILTINS)}")
    out = cache_dir()
    if not _cached(out):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            build_pycode(out)
        except OSError as e:
            raise DataError(out, f"cannot write the builtin:{name} cache ({e}); set NEGMINER_CACHE") from None
    return load_beir(out, name=f"builtin:{name}")
