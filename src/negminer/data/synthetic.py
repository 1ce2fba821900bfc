"""``synthetic:<n_targets>[:key=value,...]``: planted-structure data for scale tests.

Targets come in clusters of near-duplicates: every member has the cluster's ``core`` words plus a few
words of its own. A query names most of its target's own words, two core words and one noise word, so
a random in-batch negative is easy (other cluster) and the hard negatives are the same-cluster members.

Every word is a counter-based hash of (seed, kind, row or cluster, position): texts are made on demand
(about 10 us per text in pure Python; ``words_matrix`` does a whole array of rows with numpy), so memory
stays O(queries), not O(targets), up to tens of millions of targets. Ids are ``t<row>`` / ``q<row>``.
Options: seed=0, cluster=8, vocab=50000, core=8, own=4, train=20000, test=1000, queries (= train + test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from negminer.data.dataset import Dataset
from negminer.errors import DataError

DEFAULTS = {"seed": 0, "cluster": 8, "vocab": 50000, "core": 8, "own": 4, "train": 20000, "test": 1000}
M64 = (1 << 64) - 1
CORE, OWN, QUERY = 1, 2, 3  # hash "kinds"


def _mix(x: int) -> int:
    """splitmix64 finaliser on Python ints (a well-spread 64-bit hash of a 64-bit counter)."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _mix_np(x: np.ndarray) -> np.ndarray:
    """The same hash on a uint64 array (multiplication wraps modulo 2**64)."""
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Planted:
    """Word ids of a target and of a query, as pure functions of (seed, row)."""

    def __init__(self, n: int, seed: int, cluster: int, vocab: int, core: int, own: int):
        self.n, self.seed, self.cluster, self.vocab, self.core, self.own = n, seed, cluster, vocab, core, own
        self.base = _mix(seed & M64)
        self._last = (-1, [])  # (cluster, its core words): consecutive rows share them

    def _key(self, kind: int, key: int, pos: int) -> int:
        return (self.base ^ (kind << 58) ^ (key << 6) ^ pos) & M64

    def _word(self, kind: int, key: int, pos: int) -> int:
        return _mix(self._key(kind, key, pos)) % self.vocab

    def core_words(self, row: int) -> list[int]:
        c = row // self.cluster
        last = self._last
        if last[0] != c:
            last = self._last = (c, [self._word(CORE, c, j) for j in range(self.core)])
        return list(last[1])

    def own_words(self, row: int) -> list[int]:
        return [self._word(OWN, row, j) for j in range(self.own)]

    def target_words(self, row: int) -> list[int]:
        return self.core_words(row) + self.own_words(row)

    def query_words(self, row: int) -> list[int]:
        h = [_mix(self._key(QUERY, row, j)) for j in range(4)]
        own, core = self.own_words(row), self.core_words(row)
        k = max(1, self.own - 1)  # own words: a rotated window of own-1 of them
        words = [own[(h[0] + i) % self.own] for i in range(k)]
        a = h[1] % self.core  # two distinct core words
        words += [core[a], core[(a + 1 + h[2] % max(1, self.core - 1)) % self.core]]
        words.append(h[3] % self.vocab)  # noise
        order = sorted(range(len(words)), key=lambda i: _mix(h[0] ^ (i + 1)))
        return [words[i] for i in order]

    def words_matrix(self, rows: np.ndarray) -> np.ndarray:
        """Target word ids of many rows at once, shape (len(rows), core + own), equal to ``target_words``."""
        rows = np.asarray(rows, dtype=np.uint64)[:, None]
        cl = rows // np.uint64(self.cluster)
        b = np.uint64(self.base)
        core = b ^ np.uint64(CORE << 58) ^ (cl << np.uint64(6)) ^ np.arange(self.core, dtype=np.uint64)
        own = b ^ np.uint64(OWN << 58) ^ (rows << np.uint64(6)) ^ np.arange(self.own, dtype=np.uint64)
        return (_mix_np(np.concatenate([core, own], axis=1)) % np.uint64(self.vocab)).astype(np.int64)


class LazyTexts(Sequence):
    """``"w12 w7 ..."`` texts made on demand; ``rows`` maps positions to generator rows (queries)."""

    def __init__(self, words, rows: Sequence[int] | None, n: int):
        self.words, self.rows, self.n = words, rows, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        i %= self.n
        row = i if self.rows is None else self.rows[i]
        return " ".join(["w%d" % w for w in self.words(int(row))])


class EmptyTitles(Sequence):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [""] * len(range(*i.indices(self.n)))
        return ""


class RowIds(Sequence):
    """Ids ``<prefix><row>`` without storing them; ``index_map`` maps an id back to its row."""

    def __init__(self, prefix: str, n: int):
        self.prefix, self.n = prefix, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return f"{self.prefix}{i % self.n}"

    def __eq__(self, other):
        if isinstance(other, RowIds):
            return (self.prefix, self.n) == (other.prefix, other.n)
        return NotImplemented

    @property
    def index_map(self):
        return _RowIndex(self)


class _RowIndex:
    """A read-only ``{id: row}`` mapping for ``RowIds`` (what ``Dataset.target_index`` uses)."""

    def __init__(self, ids: RowIds):
        self.ids = ids

    def __getitem__(self, key: str) -> int:
        p = self.ids.prefix
        if isinstance(key, str) and key.startswith(p) and key[len(p):].isdigit():
            r = int(key[len(p):])
            if r < self.ids.n and str(r) == key[len(p):]:
                return r
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key) -> bool:
        return self.get(key) is not None

    def __len__(self):
        return self.ids.n


def parse_spec(spec: str) -> tuple[int, dict]:
    body = spec.split(":", 1)[1] if spec.startswith("synthetic:") else spec
    n_txt, _, opts = body.partition(":")
    try:
        n = int(float(n_txt))
        params = dict(DEFAULTS)
        for kv in filter(None, opts.split(",")):
            k, v = kv.split("=")
            k = k.strip()
            if k not in DEFAULTS and k != "queries":
                raise ValueError(f"unknown option {k!r}")
            params[k] = int(float(v))
        if "queries" in params:
            params["train"] = max(0, params.pop("queries") - params["test"])
    except ValueError as e:
        keys = ", ".join([*DEFAULTS, "queries"])
        raise DataError(spec, f"expected synthetic:<n_targets>[:key=value,...] with keys {keys} ({e})") from None
    if n < 2 * params["cluster"] or params["cluster"] < 1:
        raise DataError(spec, f"need at least {2 * params['cluster']} targets and cluster >= 1")
    if not (params["vocab"] >= 2 and 2 <= params["core"] <= 64 and 1 <= params["own"] <= 64
            and params["train"] + params["test"] >= 1):
        raise DataError(spec, "need vocab >= 2, 2 <= core <= 64, 1 <= own <= 64 and at least one query")
    return n, params


def load_synthetic(spec: str) -> Dataset:
    n, p = parse_spec(spec)
    gen = Planted(n, p["seed"], p["cluster"], p["vocab"], p["core"], p["own"])
    n_q = min(n, p["train"] + p["test"])
    rows = np.sort(np.random.default_rng([p["seed"], 4]).choice(n, n_q, replace=False))  # Floyd: O(n_q) memory
    order = np.random.default_rng([p["seed"], 5]).permutation(n_q)
    is_test = np.zeros(n_q, dtype=bool)
    n_test = p["test"] if n_q == p["train"] + p["test"] else round(n_q * p["test"] / (p["train"] + p["test"]))
    is_test[order[:n_test]] = True  # fewer targets than queries asked for: the split keeps its proportion
    qids = [f"q{r}" for r in rows.tolist()]
    qrels: dict = {"train": {}, "test": {}}
    for qid, r, t in zip(qids, rows.tolist(), is_test.tolist()):
        qrels["test" if t else "train"][qid] = {f"t{r}": 1}
    return Dataset(f"synthetic:{n}", RowIds("t", n), LazyTexts(gen.target_words, None, n), EmptyTitles(n), qids,
                   LazyTexts(gen.query_words, rows, n_q), qrels, source=spec)
