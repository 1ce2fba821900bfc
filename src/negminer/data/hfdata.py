"""Hugging Face ``datasets`` data with sentence-transformers' column conventions.

Layouts (``load_dataset`` sends these here; ``datasets`` reads every format except JSONL):
  * a folder written by ``Dataset.save_to_disk`` (``dataset_info.json`` + ``state.json``: split ``train``) or
    ``DatasetDict.save_to_disk`` (``dataset_dict.json``: its own splits);
  * one ``.parquet``, ``.csv``, ``.json`` or ``.arrow`` file (split ``train``);
  * a folder in the Hugging Face Hub's layout: parquet / csv / arrow files at its top (``train.parquet``,
    ``validation.csv``), data files under ``data/`` (``data/train-00000-of-00001.parquet``) or a split's
    folder (``train/*.parquet``), or a ``README.md`` that declares configs (one of them default, or a single
    one; with several, pass one config's folder or ``hf:PATH:CONFIG``). ``datasets`` resolves the files of
    each split (its own split names: ``dev.csv`` is ``validation``); other file types there are ignored;
  * JSONL (``.jsonl``, ``.jsonl.gz``; read line by line with negminer's JSON reader, exact line numbers) that
    the plain pairs reader (data/pairs.py) does not understand: a file, or ``train.jsonl`` / ``dev.jsonl`` /
    ``test.jsonl``, whose first record has sentence-transformers' ``negative_1`` ... or ``label`` / ``labels``
    columns, and JSONL in the Hub's layout (``data/train-*.jsonl``). Other JSONL stays with data/pairs.py;
  * ``hf:NAME[:CONFIG]`` (``load_hub``): a dataset of the local Hugging Face cache, never downloaded.

Columns (by name): the query is ``anchor``, ``query`` or ``question``; the positive ``positive``,
``positives``, ``pos`` or ``answer`` (a string or a list of strings); negatives ``negative_1`` ...
``negative_n``, and/or ``negative``, ``negatives`` or ``neg`` (string or list; a null negative is skipped, so
tables padded to the longest row work). ``mine_hard_negatives``' labelled outputs are read too: ``label``
0/1 (``labeled-pair``: label 0 makes the row's text a negative) and ``labels`` (``labeled-list``: one 0/1 per
element of the positive list). A ``score`` column (``(sentence_A, sentence_B, score)`` pairs) is refused:
negminer needs positives. Other columns are ignored. CSV cells are read as text (a cell ``42`` is the text
"42"; CSV cannot hold lists).

The in-memory Dataset: targets are the unique positive and negative texts, queries the unique query texts
(ids as data/pairs.py makes them: ``t`` / ``q`` + 16 hex of the text's SHA-1, so both readers give the
same ids); a query text on several rows is one query with all those positives. Splits are the data's own
(DatasetDict keys, the Hub layout's split names, ``validation`` kept as is; a pairs-style JSONL folder names
them like data/pairs.py, ``validation`` read as ``dev``). Given negatives go to ``hard_negatives``
(deduplicated, never one of the query's positives): ``--negatives mined`` uses them without a file.

Errors are one line naming the file (a saved split's folder, or ``hf:NAME[split]``), the row (1-based: the
line in JSONL, the row of the table otherwise, so the line of a CSV file less its header) and the column.

``hf:NAME[:CONFIG]``: with the Hugging Face libraries switched to offline mode for the call, first
``datasets.load_dataset(NAME, CONFIG)``, which offline reads what an earlier online
``load_dataset(NAME[, CONFIG])`` prepared in the datasets cache (``HF_DATASETS_CACHE``,
``~/.cache/huggingface/datasets/OWNER___NAME/CONFIG/...``); else the repository's files in the Hub cache
(``HF_HUB_CACHE``, ``datasets--OWNER--NAME/snapshots/<rev>`` as ``hf download NAME --repo-type dataset``
leaves them; its ``main`` revision only), read as a Hub-layout folder. Neither present: a one-line error
saying how to fetch it. ``hf:PATH`` of a local folder (a clone of a repository) reads that folder in place.
Offline mode means the datasets cache is taken as it is: a dataset prepared by an older ``datasets`` may not
load, and a dataset whose repository holds a loading script cannot be read (``datasets`` 4+ refuses scripts).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from negminer.data.dataset import Dataset
from negminer.data.pairs import _hid, pair_files
from negminer.data.readers import json_records, text_value
from negminer.errors import DataError

QUERY_COLUMNS = ("anchor", "query", "question")
POSITIVE_COLUMNS = ("positive", "positives", "pos", "answer")
NEGATIVE_COLUMNS = ("negative", "negatives", "neg")
TABLES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".arrow": "arrow"}  # suffix -> datasets builder
JSONL = (".jsonl", ".jsonl.gz")
BATCH = 4096
INSTALL = "reading it needs the `datasets` package: pip install negminer[hf]"
_NEG_N = re.compile(r"negative_(\d+)$")


# ---- detection (no `datasets` import) ----------------------------------------------------------------

def is_saved(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file()))


def _st_jsonl(path: Path) -> bool:
    """Whether the first record of a JSONL file has columns only this reader understands."""
    records = json_records(path)
    try:
        _, rec = next(records)
    except (DataError, StopIteration):
        return False  # data/pairs.py reports it
    finally:
        records.close()
    return any(_NEG_N.match(k) or k in ("label", "labels") for k in rec)


SPLIT_DIRS = ("data", "train", "training", "test", "testing", "eval", "validation", "valid", "dev", "val")


def _tables_in(folder: Path, depth: int, jsonl: bool, budget: int = 20_000) -> bool:
    """A parquet / csv / arrow (or jsonl) file within ``depth`` folders of ``folder`` (hidden ones skipped)."""
    suffixes = (".parquet", ".csv", ".arrow") + (JSONL if jsonl else ())
    seen = 0
    for root, dirs, files in os.walk(folder):
        deep = len(Path(root).relative_to(folder).parts) >= depth
        dirs[:] = [] if deep else sorted(d for d in dirs if not d.startswith("."))
        if any(f.lower().endswith(suffixes) for f in files):
            return True
        seen += len(files) + len(dirs)
        if seen > budget:
            return False
    return False


def _hub_layout(path: Path) -> bool:
    """Data files where the Hub's layout puts them: parquet / csv / arrow at the top, anything readable under
    ``data/`` or a split's folder (``train/``...), or a README.md that declares configs."""
    if _tables_in(path, 0, jsonl=False) or _has_readme_configs(path):
        return True
    return any(_tables_in(path / d, 2, jsonl=True) for d in SPLIT_DIRS if (path / d).is_dir())


def is_hf(path: Path) -> bool:
    """Whether ``path`` is one of this module's layouts (see the module's docstring)."""
    path = Path(path)
    if path.is_file():
        name = path.name.lower()
        return _st_jsonl(path) if name.endswith(JSONL) else path.suffix.lower() in TABLES
    if not path.is_dir():
        return False
    if is_saved(path):
        return True
    files = pair_files(path)
    if files:
        return any(_st_jsonl(f) for f in files.values())
    return _hub_layout(path)


# ---- columns and rows -----------------------------------------------------------------------------------

class Columns:
    """Which column holds what, resolved from the column names (of a table, or of one JSONL record)."""

    def __init__(self, where, names: Iterable[str], line: int | None = None):
        names = list(names)
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "none"
        self.query = next((c for c in QUERY_COLUMNS if c in names), None)
        if self.query is None:
            raise DataError(where, f"no query column (expected one of {', '.join(QUERY_COLUMNS)}; has {shown})",
                            line=line)
        self.positive = next((c for c in POSITIVE_COLUMNS if c in names), None)
        if self.positive is None:
            raise DataError(where, f"no positive column (expected one of {', '.join(POSITIVE_COLUMNS)}; has {shown})",
                            line=line)
        if "score" in names:
            raise DataError(where, "a 'score' column: (sentence_A, sentence_B, score) pairs are not positives; keep "
                            "the pairs you count as positive and drop the column", line=line, field="score")
        numbered = sorted((int(m.group(1)), c) for c in names if (m := _NEG_N.match(c)))
        self.negatives = [c for _, c in numbered] + [next((c for c in NEGATIVE_COLUMNS if c in names), None)]
        self.negatives = [c for c in self.negatives if c is not None]
        self.label = "label" if "label" in names else None
        self.labels = "labels" if "labels" in names else None

    @property
    def used(self) -> list[str]:
        return [c for c in (self.query, self.positive, *self.negatives, self.label, self.labels) if c]


def _text(where, no, v, name: str) -> str:
    if v is None:
        raise DataError(where, "expected a string, got null", line=no, field=name)
    v = text_value(where, no, v, name)
    if not v.strip():
        raise DataError(where, "empty text", line=no, field=name)
    return v


def _texts(where, no, v, name: str, required: bool) -> list[str]:
    if isinstance(v, str) or (v is None and required):
        return [_text(where, no, v, name)]
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        if required and not v:
            raise DataError(where, "empty list", line=no, field=name)
        return [_text(where, no, x, f"{name}[{i}]") for i, x in enumerate(v)]
    raise DataError(where, f"expected a string or a list of strings, got {type(v).__name__}", line=no, field=name)


def _label(where, no, v, name: str) -> int:
    ok = isinstance(v, (bool, int)) or (isinstance(v, float) and v.is_integer())
    if not ok or int(v) not in (0, 1):
        raise DataError(where, f"expected a label 0 or 1, got {v!r}", line=no, field=name)
    return int(v)


def split_row(where, no: int, rec, cols: Columns) -> tuple[str, list[str], list[str]]:
    """(query text, positive texts, negative texts) of one row, every value checked."""
    q = _text(where, no, rec[cols.query], cols.query)
    pos = _texts(where, no, rec[cols.positive], cols.positive, True)
    negs = [t for c in cols.negatives for t in _texts(where, no, rec.get(c), c, False)]
    if cols.labels:
        labels = rec[cols.labels]
        if not isinstance(labels, (list, tuple)) or len(labels) != len(pos):
            raise DataError(where, f"expected a list of {len(pos)} labels (one per {cols.positive}), got "
                            f"{labels!r:.60}", line=no, field=cols.labels)
        flags = [_label(where, no, v, f"{cols.labels}[{i}]") for i, v in enumerate(labels)]
        negs += [t for t, f in zip(pos, flags) if not f]
        pos = [t for t, f in zip(pos, flags) if f]
    elif cols.label and not _label(where, no, rec[cols.label], cols.label):
        negs, pos = negs + pos, []
    return q, pos, negs


class Collect:
    """Targets, queries, judgements and negatives, de-duplicated by text as the rows come."""

    def __init__(self):
        self.targets: dict[str, str] = {}
        self.queries: dict[str, str] = {}
        self.qrels: dict[str, dict[str, dict[str, int]]] = {}
        self.negs: dict[str, list[str]] = {}

    def add(self, split: str, q: str, pos: list[str], negs: list[str]) -> None:
        judged = self.qrels.setdefault(split, {})
        qid = _hid("q", q)
        self.queries[qid] = q
        for t in pos:
            tid = _hid("t", t)
            self.targets[tid] = t
            judged.setdefault(qid, {})[tid] = 1
        for t in negs:
            tid = _hid("t", t)
            self.targets[tid] = t
            self.negs.setdefault(qid, []).append(tid)

    def rows(self, split: str, where, rows: Iterator[tuple[int, dict, Columns]]) -> None:
        self.qrels.setdefault(split, {})
        for no, rec, cols in rows:
            self.add(split, *split_row(where, no, rec, cols))

    def dataset(self, name: str, source: str) -> Dataset:
        negs = {}
        for qid, ids in self.negs.items():  # once each, never one of the query's own positives
            pos = {t for judged in self.qrels.values() for t in judged.get(qid, {})}
            negs[qid] = [t for t in dict.fromkeys(ids) if t not in pos]
        tids = list(self.targets)
        return Dataset(name, tids, [self.targets[t] for t in tids], [""] * len(tids), list(self.queries),
                       list(self.queries.values()), self.qrels, hard_negatives=negs, source=source)


def _why(e: BaseException) -> str:
    msg = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {msg[:300]}" if msg else type(e).__name__


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict, Columns]]:
    known: dict[tuple, Columns] = {}
    for no, rec in json_records(path):
        key = tuple(rec)
        cols = known.get(key) or known.setdefault(key, Columns(path, key, line=no))
        yield no, rec, cols


def _table_rows(where, table, columns: Iterable[str] | None = None) -> Iterator[tuple[int, dict, Columns]]:
    """Rows of a ``datasets`` Dataset or IterableDataset in column batches; the columns are resolved from
    ``columns`` (known up front) or the first batch. Read failures are one line naming ``where``."""
    cols = Columns(where, columns) if columns is not None else None
    if cols is not None:
        table = table.select_columns(cols.used)
    batches = iter(table.iter(batch_size=BATCH))
    row = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # a corrupt file, a CSV / JSON parse error, a type change between rows
            raise DataError(where, f"cannot read ({_why(e)})", line=row + 1 if row else None) from None
        if cols is None:
            cols = Columns(where, list(batch))
        names = cols.used
        for values in zip(*(batch[c] for c in names)):
            row += 1
            yield row, dict(zip(names, values)), cols


# ---- datasets ---------------------------------------------------------------------------------------------

def _require(where):
    try:
        import datasets
    except ImportError:
        raise DataError(where, INSTALL) from None
    return datasets


@contextlib.contextmanager
def _offline_and_quiet(datasets):
    """The Hugging Face libraries in offline mode (never a download), without their progress bars and
    warnings; everything restored afterwards."""
    import huggingface_hub.constants as hub
    from datasets.utils import logging as dlog

    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE, dlog.get_verbosity(),
             datasets.are_progress_bars_disabled())
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    os.environ.update({k: "1" for k in env})
    dlog.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved[0], saved[1]
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        dlog.set_verbosity(saved[2])
        if not saved[3]:
            datasets.enable_progress_bars()


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f), [])
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise DataError(path, f"cannot read the CSV header ({_why(e)})", line=1) from None


def _file_rows(datasets, path: Path) -> Iterator[tuple[int, dict, Columns]]:
    """Rows of one data file: JSONL by negminer's reader, the rest by ``datasets`` (streamed: no copy in the
    datasets cache; its lock files go to a temporary folder)."""
    name = path.name.lower()
    if name.endswith(JSONL):
        yield from _jsonl_rows(path)
        return
    kind = TABLES.get(path.suffix.lower())
    if kind is None:
        raise DataError(path, f"unsupported file type (read: {', '.join(TABLES)}, .jsonl)")
    kwargs = {}
    if kind == "csv":  # every cell is text, an empty cell the empty text
        header = _csv_header(path)
        if not header:
            raise DataError(path, "empty CSV file (no header row)")
        kwargs = {"features": datasets.Features({c: datasets.Value("string") for c in header}), "na_filter": False}
    with tempfile.TemporaryDirectory(prefix="negminer-hf-") as tmp:
        try:
            table = datasets.load_dataset(kind, data_files=[str(path)], split="train", streaming=True,
                                          cache_dir=tmp, **kwargs)
        except Exception as e:
            raise DataError(path, f"cannot read as {kind} ({_why(e)})") from None
        yield from _table_rows(path, table)


def _has_readme_configs(folder: Path) -> bool:
    readme = folder / "README.md"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
    except OSError:
        return False
    if not text.startswith("---"):
        return False
    front = text.split("\n---", 1)[0]
    return re.search(r"^configs\s*:", front, re.M) is not None


def _split_files(datasets, folder: Path, config: str | None = None, label=None) -> dict[str, list[Path]]:
    """split -> its files, as ``datasets`` resolves a folder in the Hub's layout (a README's configs honoured)."""
    where = label or folder
    if config or _has_readme_configs(folder):
        with tempfile.TemporaryDirectory(prefix="negminer-hf-") as tmp:
            try:
                files = datasets.load_dataset_builder(str(folder), config, cache_dir=tmp).config.data_files
            except Exception as e:
                if config is None and "Config name is missing" in str(e):
                    names = datasets.get_dataset_config_names(str(folder))
                    raise DataError(where, f"several configs ({', '.join(names)}): pass the folder of one, or "
                                    "hf:NAME:CONFIG") from None
                raise DataError(where, f"cannot resolve its data files ({_why(e)})") from None
    else:
        from datasets.data_files import DataFilesDict, get_data_patterns

        try:
            files = DataFilesDict.from_patterns(get_data_patterns(str(folder)), str(folder))
        except Exception as e:
            raise DataError(where, f"no data files found by the Hugging Face layout ({_why(e)})") from None
    files = files or {}
    readable = tuple(TABLES) + JSONL  # other files datasets would take (.txt, images...) are not data here
    out = {str(split): [Path(f) for f in fs if str(f).lower().endswith(readable)] for split, fs in files.items()}
    out = {split: fs for split, fs in out.items() if fs}
    if not out:
        raise DataError(where, "no data files (parquet, csv, json, jsonl, arrow)")
    return out


def _read_files(collect: Collect, datasets, files: dict[str, list[Path]]) -> None:
    for split, paths in files.items():
        collect.qrels.setdefault(split, {})
        for f in paths:
            collect.rows(split, f, _file_rows(datasets, f))


def _read_dict(collect: Collect, tables: dict, where) -> None:
    """Splits of a DatasetDict (or {"train": Dataset}); ``where(split)`` names a split in errors."""
    for split, table in tables.items():
        collect.rows(str(split), where(split), _table_rows(where(split), table, table.column_names))


# ---- entry points ----------------------------------------------------------------------------------------------

def load_hf(path: str | Path, name: str | None = None) -> Dataset:
    """A save_to_disk folder, a parquet / csv / json / arrow / JSONL file, or a folder of such files."""
    path = Path(path)
    name = name or path.name.split(".")[0]
    collect = Collect()
    pairs = pair_files(path) if path.is_dir() and not is_saved(path) else {}
    if path.is_file() and path.name.lower().endswith(JSONL):
        collect.rows("train", path, _jsonl_rows(path))
    elif pairs and all(f.name.lower().endswith(JSONL) for f in pairs.values()):
        for split, f in pairs.items():  # split names as data/pairs.py gives them
            collect.rows("dev" if split == "validation" else split, f, _jsonl_rows(f))
    else:
        datasets = _require(path)
        with _offline_and_quiet(datasets):
            if path.is_file():
                _read_files(collect, datasets, {"train": [path]})
            elif is_saved(path):
                try:
                    saved = datasets.load_from_disk(str(path))
                except Exception as e:
                    raise DataError(path, f"cannot read the saved dataset ({_why(e)})") from None
                if isinstance(saved, datasets.DatasetDict):
                    _read_dict(collect, saved, lambda s: path / s)
                else:
                    _read_dict(collect, {"train": saved}, lambda s: path)
            else:
                _read_files(collect, datasets, _split_files(datasets, path))
    return collect.dataset(name, str(path))


def load_hub(spec: str) -> Dataset:
    """``hf:NAME[:CONFIG]`` (``spec`` without ``hf:``) from the local Hugging Face cache only."""
    label = f"hf:{spec}"
    name, _, config = spec.partition(":")
    if not name:
        raise DataError(label, "expected hf:NAME or hf:NAME:CONFIG (e.g. hf:sentence-transformers/all-nli:triplet)")
    datasets = _require(label)
    collect = Collect()
    with _offline_and_quiet(datasets):
        if Path(name).is_dir():  # a local copy of a repository: its files, no prepared copy in the cache
            _read_files(collect, datasets, _split_files(datasets, Path(name), config or None, label))
            return collect.dataset(spec, f"{label} ({Path(name).resolve()})")
        try:
            tables = datasets.load_dataset(name, config or None)
        except Exception as e:
            first = e
        else:
            if not isinstance(tables, dict):
                tables = {"train": tables}
            _read_dict(collect, tables, lambda s: f"{label}[{s}]")
            return collect.dataset(spec, f"{label} (datasets cache {datasets.config.HF_DATASETS_CACHE})")
        folder = _hub_snapshot(name)
        if folder is None:
            import huggingface_hub.constants as hub

            if isinstance(first, ConnectionError):  # not in the datasets cache at all
                why = ""
            else:
                why = f" ({_why(first)})"
            call = f"datasets.load_dataset({name!r}" + (f", {config!r})" if config else ")")
            raise DataError(label, f"not in the local Hugging Face cache{why}: looked in "
                            f"{datasets.config.HF_DATASETS_CACHE} and {hub.HF_HUB_CACHE}; negminer does not "
                            f"download: run {call} (or `hf download {name} --repo-type dataset`) once with network "
                            "access, or pass a folder or file")
        _read_files(collect, datasets, _split_files(datasets, folder, config or None, label))
    return collect.dataset(spec, f"{label} ({folder})")


def _hub_snapshot(name: str) -> Path | None:
    """The folder of the dataset repository ``name`` in the Hub cache (its ``main`` revision), if there."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, repo_type="dataset", local_files_only=True))
    except Exception:
        return None
