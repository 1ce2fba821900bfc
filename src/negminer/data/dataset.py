"""The in-memory dataset every reader produces: targets, queries, graded relevance per split."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Dataset:
    """Targets (corpus), queries and relevance judgements.

    ``qrels[split][query_id][target_id] = grade``; a grade <= 0 means judged not relevant.
    ``hard_negatives[query_id]`` holds negatives given by the data (JSONL pairs), if any.
    ``filter_pairs[split]`` holds ``(query_id, target_id)`` pairs that evaluation removes from both the
    ranking and the truth (the Extreme Classification Repository's ``filter_labels_*.txt``); ``xmc`` is
    True for data read from one of that repository's layouts. ``is_multilabel()`` says whether the
    multi-label (XMC) metrics apply.
    """

    name: str
    target_ids: list[str]
    target_texts: list[str]
    target_titles: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, dict[str, int]]]
    hard_negatives: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    filter_pairs: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    xmc: bool = False

    def __post_init__(self):
        lazy = getattr(self.target_ids, "index_map", None)  # synthetic ids: no dict of N entries
        self.target_index = lazy if lazy is not None else {t: i for i, t in enumerate(self.target_ids)}
        self.query_index = {q: i for i, q in enumerate(self.query_ids)}

    @property
    def num_targets(self) -> int:
        return len(self.target_ids)

    def is_multilabel(self) -> bool:
        """True for XMC data, or when some query of some split has more than one positive."""
        return self.xmc or any(sum(g > 0 for g in judged.values()) > 1
                               for split in self.qrels.values() for judged in split.values())

    @property
    def splits(self) -> list[str]:
        return list(self.qrels)

    def target_inputs(self):
        """Text fed to the target tower: 'title text' (the BEIR / MTEB convention)."""
        if not isinstance(self.target_titles, list):  # lazy data without titles
            return self.target_texts
        return [f"{ti} {tx}".strip() if ti else tx for ti, tx in zip(self.target_titles, self.target_texts)]

    def positives(self, split: str) -> dict[str, dict[int, int]]:
        """query id -> {target row: grade > 0}, for queries of ``split`` with at least one positive."""
        if split not in self.qrels:
            from negminer.errors import MissingSplit

            raise MissingSplit(f"dataset {self.name!r} has no split {split!r} (has {', '.join(self.qrels) or 'none'})")
        out: dict[str, dict[int, int]] = {}
        for qid, judged in self.qrels[split].items():
            pos = {self.target_index[t]: g for t, g in judged.items() if g > 0}
            if pos:
                out[qid] = pos
        return out
