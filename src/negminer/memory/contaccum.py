"""ContAccum: gradient accumulation with a dual memory bank of past query and target embeddings.

Kim, Lee, Kang, "A Gradient Accumulation Method for Dense Retriever under Memory Constraint",
NeurIPS 2024. Plain accumulation gives each micro-batch of b = B/K queries only b - 1 negatives.
ContAccum keeps, FIFO across micro-batches and optimiser steps, the detached embeddings of the last M
queries (M_q), their positives (M_p) and their drawn hard negatives (M_n), and at micro-batch k with
fresh queries Q_k and positives P_k scores
    anchors A = [Q_k; M_q],  candidates C = [P_k; M_p; M_n],
    L_k = (1/|A|) sum_{a in A} -log exp(s(a, c_a)) / sum_{c in C} exp(s(a, c)),
with c_a the anchor's own positive. Gradients reach the fresh rows only: Q_k from its rows, P_k as a
candidate of every anchor, so the target tower sees as many anchors as the query tower sees
candidates. With the passage bank alone (``--bank passage``, A = Q_k: MoCo-style, pre-batch
negatives) the query tower's gradient outgrows the target tower's; the trainer logs the ratio of the
two gradient norms (``grad_norm_ratio``, separate towers) so the imbalance shows.

Beyond the paper: a candidate that is one of the anchor's positives or their text duplicates is masked
(the same exclusions as in-batch), each target appears once (the fresh copy if the micro-batch has
it, else the newest bank copy), and with ``--loss decoupled/topk/triplet`` the other positives among
the candidates are terms as in-batch. Any loss with an in-batch pool works.

    negminer train --memory contaccum --accumulation 8 --batch-size 512 --bank-size 1024 ...
"""

from __future__ import annotations

import torch

from negminer.errors import ConfigError
from negminer.memory.accumulation import Accumulation
from negminer.pipeline.assemble import first_occurrence, positive_terms
from negminer.types import Exclusions


def newest_occurrence(rows: torch.Tensor) -> torch.Tensor:
    """[M] bool: True at the last position of each distinct row."""
    return first_occurrence(rows.flip(0)).flip(0)


class MemoryBank:
    """FIFO of (query, positive) embedding pairs and their drawn negatives, kept across steps. Each pair also
    keeps its query's excluded rows and positives (as (pair number, row) lists), for masks without Python loops."""

    names = ("q", "p", "p_rows", "q_idx", "seq", "n", "n_rows", "n_seq", "ex_seq", "ex_rows", "pp_seq", "pp_rows")

    def __init__(self, size: int, dual: bool = True):
        self.size, self.dual, self.pushes = size, dual, 0
        for k in self.names:
            setattr(self, k, None)

    def __len__(self) -> int:
        return 0 if self.q is None else len(self.q)

    def push(self, q, p, pos_rows, q_idx, neg=None, neg_rows=None, exclude=None, positives=None) -> None:
        """Enqueue a micro-batch (embeddings detached, float32); the oldest pairs fall out, and with them
        a micro-batch's negatives with its last pair. ``exclude`` / ``positives``: per query, its never-negative rows and its
        positive rows (default: its own positive)."""
        first = 0 if self.seq is None or not len(self.seq) else int(self.seq[-1]) + 1
        seq = torch.arange(first, first + len(q))
        self.pushes += 1
        own = [{int(r)} for r in pos_rows]

        def pairs(sets):
            s = [(int(a), int(r)) for a, rows in zip(seq, sets) for r in rows]
            return torch.tensor([a for a, _ in s], dtype=torch.long), torch.tensor([r for _, r in s], dtype=torch.long)

        ex_seq, ex_rows = pairs(exclude or own)
        pp_seq, pp_rows = pairs(positives or own)
        if neg is None:
            neg, neg_rows = q.new_zeros(0, q.shape[-1]), torch.zeros(0, dtype=torch.long)
        new = {"q": q.detach().float(), "p": p.detach().float(), "p_rows": torch.as_tensor(pos_rows).long().cpu(),
               "q_idx": torch.as_tensor(q_idx).long().cpu(), "seq": seq, "n": neg.detach().float(),
               "n_rows": torch.as_tensor(neg_rows).long().cpu(), "n_seq": torch.full((len(neg),), int(seq[-1])),
               "ex_seq": ex_seq, "ex_rows": ex_rows, "pp_seq": pp_seq, "pp_rows": pp_rows}
        for k, v in new.items():
            old = getattr(self, k)
            setattr(self, k, v if old is None else torch.cat([old, v.to(old.device)]))
        start = int(self.seq[max(0, len(self.seq) - self.size)])  # the oldest pair kept
        for k in ("q", "p", "p_rows", "q_idx", "seq"):
            setattr(self, k, getattr(self, k)[-self.size:])
        for group in (("n", "n_rows", "n_seq"), ("ex_rows", "ex_seq"), ("pp_rows", "pp_seq")):
            alive = getattr(self, group[-1]) >= start
            for k in group:
                t = getattr(self, k)
                setattr(self, k, t[alive.to(t.device)])

    def _sets(self, which: str, n: int) -> Exclusions:
        s, rows = (self.ex_seq, self.ex_rows) if which == "exclude" else (self.pp_seq, self.pp_rows)
        return Exclusions.from_pairs(s - self.seq[0], rows, len(self), n)

    def extend(self, kw: dict, batch, num_targets: int) -> dict:
        """The loss inputs of a micro-batch (``kw`` from pipeline.assemble, in-batch pool included) with the
        bank's candidates and, for the dual bank, its anchors."""
        if not len(self):
            return kw
        if kw.get("neg_log_pi") is not None or kw.get("pool_log_pi") is not None:
            raise ConfigError("--memory contaccum cannot correct a sampled softmax (the bank's inclusion "
                              "probabilities are unknown); use an uncorrected sampler")
        q, dev = kw["q"], kw["q"].device
        local = batch.pos_rows.cpu()
        b = len(local)
        rows = torch.cat([self.p_rows, self.n_rows])
        keep = newest_occurrence(rows) & ~torch.isin(rows, local)
        every = torch.cat([local, rows])
        out = dict(kw)
        out["pool"] = torch.cat([kw["pool"].float(), torch.cat([self.p, self.n]).to(dev)])
        masks = [torch.cat([kw["pool_mask"].cpu(), batch.excl.contains(rows.expand(b, -1)).cpu() | ~keep], 1)]
        if self.dual:
            m = len(self.q)
            mm = self._sets("exclude", num_targets).contains(every.expand(m, -1)).cpu()
            mm[:, b:] |= ~keep
            masks.append(mm)
            out["q"] = torch.cat([q.float(), self.q.to(dev)])
            out["pos"] = torch.cat([kw["pos"].float(), self.p.to(dev)])
            if kw.get("neg") is not None:
                neg = kw["neg"]
                out["neg"] = torch.cat([neg.float(), neg.new_zeros(m, *neg.shape[1:]).float()])
                out["neg_mask"] = torch.cat([kw["neg_mask"], torch.ones(m, neg.shape[1], dtype=torch.bool,
                                                                        device=kw["neg_mask"].device)])
        out["pool_mask"] = torch.cat(masks).to(dev)
        if "pool_pos" in kw:
            keep_all = torch.cat([first_occurrence(local), keep])
            pp = [positive_terms(batch.positives, local, every, keep_all)]
            if self.dual:
                pp.append(positive_terms(self._sets("positives", num_targets), self.p_rows, every, keep_all))
            out["pool_pos"] = torch.cat(pp).to(dev)
        return out

    def state(self) -> tuple[dict, dict]:
        if not len(self):
            return {}, {"pushes": self.pushes}
        return {f"bank.{k}": getattr(self, k).cpu().contiguous() for k in self.names}, {"pushes": self.pushes}

    def load_state(self, tensors: dict, meta: dict, device) -> None:
        self.pushes = int(meta.get("pushes", 0))
        for k in self.names:
            t = tensors.get(f"bank.{k}")
            if t is not None and k in ("q", "p", "n"):
                t = t.to(device)
            setattr(self, k, t)


class ContAccum(Accumulation):
    """Accumulation whose micro-batches also score the bank (``extend``), pushed after each micro-batch."""

    name = "contaccum"

    def __init__(self, accumulation: int, bank_size: int, dual: bool = True, warmup: int = 0):
        super().__init__(accumulation)
        self.bank, self.warmup = MemoryBank(bank_size, dual=dual), warmup

    def extend(self, kw: dict, batch, num_targets: int) -> dict:
        return self.bank.extend(kw, batch, num_targets) if batch.step >= self.warmup else kw

    def after_micro(self, step: int, q=None, p=None, pos_rows=None, idx=None, drawn_emb=None, drawn_rows=None,
                    exclude=None, positives=None, **_) -> None:
        self.bank.push(q, p, pos_rows, idx, drawn_emb, drawn_rows, exclude=exclude, positives=positives)

    def state(self) -> tuple[dict, dict]:
        return self.bank.state()

    def load_state(self, tensors: dict, meta: dict) -> None:
        self.bank.load_state(tensors, meta, "cpu")  # moved to the loss's device when scored
