"""``synthetic:<n_targets>[:key=value,...]``: planted-structure data for scale tests.

Targets come in clusters of near-duplicates: every member has the cluster's ``core`` words plus a few
words of its own. A query names some of its target's own words and a couple of core words, so a
random in-batch negative is easy (other cluster) and the hard negatives are the same-cluster members.
Texts are made on demand from (seed, row): memory stays O(queries), not O(targets), up to tens
of millions of targets. Options: seed=0, cluster=8, vocab=50000, core=8, own=4, train=20000, test=1000.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from negminer.data.dataset import Dataset
from negminer.errors import DataError

DEFAULTS = {"seed": 0, "cluster": 8, "vocab": 50000, "core": 8, "own": 4, "train": 20000, "test": 1000}


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

    @property
    def index_map(self):
        return _RowIndex(self)


class _RowIndex:
    def __init__(self, ids: RowIds):
        self.ids = ids

    def __getitem__(self, key: str) -> int:
        if key.startswith(self.ids.prefix) and key[len(self.ids.prefix):].isdigit():
            r = int(key[len(self.ids.prefix):])
            if r < self.ids.n:
                return r
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        try:
            self[key]
            return True
        except KeyError:
            return False

    def __len__(self):
        return self.ids.n


class Planted:
    """Word ids of a target and of a query, as pure functions of (seed, row)."""

    def __init__(self, n: int, seed: int, cluster: int, vocab: int, core: int, own: int):
        self.n, self.seed, self.cluster, self.vocab, self.core, self.own = n, seed, cluster, vocab, core, own

    def core_words(self, row: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, row // self.cluster]).integers(0, self.vocab, self.core)

    def own_words(self, row: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 2, row]).integers(0, self.vocab, self.own)

    def target_words(self, row: int) -> np.ndarray:
        return np.concatenate([self.core_words(row), self.own_words(row)])

    def query_words(self, row: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3, row])
        own, core = self.own_words(row), self.core_words(row)
        k = max(1, self.own - 1)
        words = np.concatenate([rng.choice(own, k, replace=False), rng.choice(core, 2, replace=False),
                                rng.integers(0, self.vocab, 1)])
        return rng.permutation(words)


class LazyTexts(Sequence):
    def __init__(self, words, rows: Sequence[int] | None, n: int):
        self.words, self.rows, self.n = words, rows, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        row = i if self.rows is None else self.rows[i]
        return " ".join(f"w{w}" for w in self.words(int(row)))


def parse_spec(spec: str) -> tuple[int, dict]:
    body = spec.split(":", 1)[1] if spec.startswith("synthetic:") else spec
    n_txt, _, opts = body.partition(":")
    try:
        n = int(float(n_txt))
        params = dict(DEFAULTS)
        for kv in filter(None, opts.split(",")):
            k, v = kv.split("=")
            if k not in DEFAULTS:
                raise ValueError(f"unknown option {k!r}")
            params[k] = int(v)
    except ValueError as e:
        raise DataError(spec, f"expected synthetic:<n_targets>[:key=value,...] with keys {', '.join(DEFAULTS)} ({e})") from None
    if n < 2 * params["cluster"]:
        raise DataError(spec, f"need at least {2 * params['cluster']} targets")
    return n, params


def load_synthetic(spec: str) -> Dataset:
    n, p = parse_spec(spec)
    gen = Planted(n, p["seed"], p["cluster"], p["vocab"], p["core"], p["own"])
    n_q = min(n, p["train"] + p["test"])
    rows = np.sort(np.random.default_rng([p["seed"], 4]).choice(n, n_q, replace=False))
    split = np.random.default_rng([p["seed"], 5]).permutation(n_q)
    test_idx = set(split[: min(p["test"], n_q // 5)].tolist())
    qids = [f"q{r}" for r in rows]
    qrels = {"train": {}, "test": {}}
    for i, r in enumerate(rows):
        qrels["test" if i in test_idx else "train"][qids[i]] = {f"t{r}": 1}
    targets = RowIds("t", n)
    return Dataset(f"synthetic:{n}", targets, LazyTexts(gen.target_words, None, n), EmptyTitles(n), qids,
                   LazyTexts(gen.query_words, rows, n_q), qrels, source=spec)


class EmptyTitles(Sequence):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return ""
