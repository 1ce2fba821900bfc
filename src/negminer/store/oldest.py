"""Oldest-first order over some rows of a store, without sorting every row every step.

Rows leave in (age, row) order, never-encoded (-1) first, as ``sorted(key=(age, row))`` would give.
Every store write sets a row's age to the current step, which is never older than what is queued,
so the queue is a list of groups in age order: a write appends its rows (sorted, merged into the
last group when the age is the same) and leaves the row's older entry behind as stale; ``pop``
skips stale entries (their recorded age is no longer the row's age). Cost per step: the rows
written and popped, not the rows held. The queue is a function of the ages, so a resumed run
rebuilds it (one sort) and gets the same order.

Example::

    q = OldestFirst(store, rows=cache_rows)   # subscribes to the store's writes
    store.encode(q.pop(100), model, step)
"""

from __future__ import annotations

from collections import deque

import torch


class OldestFirst:
    def __init__(self, store, rows: torch.Tensor | None = None):
        self.store = store
        self.member = None
        if rows is not None:
            self.member = torch.zeros(store.n, dtype=torch.bool)
            self.member[rows] = True
        self._rows = rows
        self.rebuild()
        store.listeners.append(self._on_write)

    def rebuild(self) -> None:
        rows = torch.arange(self.store.n) if self._rows is None else torch.as_tensor(self._rows, dtype=torch.long)
        age = self.store.age[rows].long()
        order = (age * (self.store.n + 1) + rows).argsort()
        rows, age = rows[order], age[order]
        self.groups: deque = deque()  # (rows [m] sorted within an age, age [m]) in age order
        if len(rows):
            self.groups.append((rows, age))
        self.head = 0  # position inside groups[0]
        self.last_age = int(age[-1]) if len(age) else -1

    def _on_write(self, rows, step) -> None:
        if rows is None:  # the whole store was replaced (resume)
            self.rebuild()
            return
        if step is None:  # moved without re-encoding (Nystrom): ages, hence the order, unchanged
            return
        if self.member is not None:
            rows = rows[self.member[rows]]
        if not len(rows):
            return
        if step < self.last_age:  # a write older than what is queued: not the training loop's order
            self.rebuild()
            return
        rows = rows.unique()
        if step == self.last_age and self.groups and int(self.groups[-1][1][-1]) == step:
            r, a = self.groups.pop()
            if len(self.groups) == 0:
                r, a = r[self.head:], a[self.head:]
                self.head = 0
            rows = torch.cat([r[a == step], rows]).unique()
            rest = r[a != step]
            if len(rest):
                self.groups.append((rest, a[a != step]))
        self.groups.append((rows, torch.full((len(rows),), step, dtype=torch.long)))
        self.last_age = step

    def _valid(self, rows, age) -> torch.Tensor:
        return self.store.age[rows].long() == age

    def _compact(self) -> None:
        """Advance past stale entries at the front (amortised: each entry is passed once)."""
        while self.groups:
            rows, age = self.groups[0]
            while self.head < len(rows):
                ok = self._valid(rows[self.head:self.head + 4096], age[self.head:self.head + 4096])
                if bool(ok.any()):
                    self.head += int(ok.long().argmax())
                    return
                self.head += len(ok)
            self.groups.popleft()
            self.head = 0

    def pop(self, count: int) -> torch.Tensor:
        """The ``count`` oldest rows (fewer if fewer are held); they stay queued until written."""
        self._compact()
        out, need, pos = [], count, self.head
        for rows, age in self.groups:
            while need > 0 and pos < len(rows):
                r, a = rows[pos:pos + max(2 * need, 256)], age[pos:pos + max(2 * need, 256)]
                valid = r[self._valid(r, a)][:need]
                out.append(valid)
                need -= len(valid)
                pos += len(r)
            if need <= 0:
                break
            pos = 0
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
