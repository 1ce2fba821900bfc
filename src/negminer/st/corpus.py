"""The corpus of a ``NegativeCacheLoss``: its texts and ids, and how a batch's positives are found in it.

A sentence-transformers loss sees token features, never texts (the trainer's collator tokenises each
column with ``model.preprocess``). So the corpus is tokenised once by the same ``preprocess`` and each
row keyed by its token ids; a batch's positive is the corpus row whose key equals the positive's. Rows
that tokenise alike are one target for the model (never each other's negative), and so are rows whose
normalised texts are equal (``negminer.train.duplicates``: whitespace collapsed, lower case).

    corpus = Corpus({"d1": "Paris is in France", "d2": "paris is in  France"})
    corpus.index(model)                      # tokenise every row once
    rows = corpus.find(token_rows(features)) # the row of each positive (None: not in the corpus)
    corpus.group(0)                          # {0, 1}: the rows that are the same target as row 0
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch

from negminer.train.duplicates import duplicate_groups

INDEX_CHUNK = 4096  # texts per preprocess call while indexing


def token_rows(features: dict, pad_id: int | None = None) -> list[np.ndarray]:
    """Each row's token ids (without padding) from a batch of ``model.preprocess`` features: padded
    [B, L] ``input_ids`` with an ``attention_mask``, or the flat ids + ``offsets`` of a StaticEmbedding."""
    ids = features.get("input_ids")
    if not torch.is_tensor(ids):
        raise ValueError("NegativeCacheLoss finds positives in the corpus by their token ids; these features have no "
                         f"input_ids tensor (keys: {sorted(features)}): only text models are supported")
    ids = ids.detach().cpu()
    if ids.dim() == 1:
        if "offsets" not in features:
            raise ValueError("flat input_ids without offsets: an input module NegativeCacheLoss does not know")
        off = features["offsets"].detach().cpu().tolist() + [len(ids)]
        flat = ids.numpy()
        return [flat[a:b] for a, b in zip(off[:-1], off[1:])]
    if ids.dim() != 2:
        raise ValueError(f"input_ids of shape {tuple(ids.shape)}: NegativeCacheLoss needs [batch, tokens]")
    mask = features.get("attention_mask")
    out = []
    for i, row in enumerate(ids.numpy()):
        if torch.is_tensor(mask):
            row = row[mask[i].detach().cpu().numpy().astype(bool)]
        elif pad_id is not None:  # no mask: strip trailing padding
            end = len(row)
            while end and row[end - 1] == pad_id:
                end -= 1
            row = row[:end]
        out.append(row)
    return out


def key_of(ids: np.ndarray) -> bytes:
    return np.asarray(ids, dtype=np.int64).tobytes()


class Corpus:
    """Texts and ids (a list: ids "0".."N-1"; a dict: its keys), indexed by token ids on first use."""

    def __init__(self, corpus, dedupe_text: bool = True):
        if isinstance(corpus, Mapping):
            ids, texts = [str(k) for k in corpus], list(corpus.values())
        elif isinstance(corpus, (str, bytes)) or not hasattr(corpus, "__len__"):
            raise TypeError("corpus must be a list of texts or a dict id -> text")
        else:
            texts = list(corpus)
            ids = [str(i) for i in range(len(texts))]
        if not texts:
            raise ValueError("the corpus is empty")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"corpus row {ids[bad]!r} is {type(texts[bad]).__name__}, not a text")
        if len(set(ids)) != len(ids):
            raise ValueError("corpus ids are not unique")
        self.ids, self.texts, self.n = ids, texts, len(texts)
        self.dups = duplicate_groups(texts) if dedupe_text else {}
        self.rows_of_key: dict[bytes, list[int]] | None = None
        self.key_of_row: list[bytes] | None = None

    def fingerprint(self) -> str:
        """A hash of the ids and texts (a checkpoint's store belongs to this corpus only)."""
        h = hashlib.blake2b(digest_size=16)
        for i, t in zip(self.ids, self.texts):
            h.update(i.encode("utf-8", "surrogatepass") + b"\0" + t.encode("utf-8", "surrogatepass") + b"\1")
        return h.hexdigest()

    def index(self, preprocess, pad_id: int | None = None) -> None:
        """Tokenise every row with ``preprocess(texts) -> features`` (once)."""
        if self.rows_of_key is not None:
            return
        keys: list[bytes] = []
        for s in range(0, self.n, INDEX_CHUNK):
            keys.extend(key_of(r) for r in token_rows(preprocess(self.texts[s:s + INDEX_CHUNK]), pad_id))
        rows: dict[bytes, list[int]] = {}
        for r, k in enumerate(keys):
            rows.setdefault(k, []).append(r)
        self.key_of_row, self.rows_of_key = keys, rows

    def find(self, rows_ids: list[np.ndarray]) -> list[int | None]:
        """The corpus row of each token-id row (the first of equal ones), None where none matches."""
        out = []
        for ids in rows_ids:
            hit = self.rows_of_key.get(key_of(ids))
            out.append(hit[0] if hit else None)
        return out

    def group(self, row: int) -> set[int]:
        """The rows that are the same target as ``row``: equal token ids or equal normalised text."""
        out = set(self.rows_of_key[self.key_of_row[row]])
        for r in list(out):
            out.update(self.dups.get(r, ()))
        return out
