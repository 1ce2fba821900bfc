"""Corrector network: moves stale cached embeddings to where the current target tower would put them.

Monath, Grathwohl, Boratko, Fergus, McCallum, Zaheer, "A Fresh Take on Stale Embeddings: Improving
Dense Retriever Training with Corrector Networks", ICML 2024. A small network h maps the embedding
g'(y) a row got when it was last encoded (its raw embedding) towards g(y), the current tower's:

    h(x, a) = x + W_L s(... s(W_1 [x, log(1 + a) / 4]))     residual MLP, W_L = 0: the identity at start
    L_h     = mean over pairs of ||h(g'(y), a) - stopgrad(g(y))||^2 / ||g(y)||^2

with a the raw embedding's age in steps (``age=False``: not an input). h trains online, with its own
Adam, on pairs the run makes anyway: every time a row is encoded (the training forward of positives
and drawn negatives, refreshed rows, landmarks) its last raw embedding and the new one form a pair
(a ring buffer of the most recent ``buffer`` pairs, one minibatch of ``batch`` per step). Scores are
<f(x), h(g'(y))>; h's outputs are used once ``warmup`` steps have passed and while h beats the
identity on the newest pairs, scored before it trains on them (``corrector_ratio``, a moving average of
their staleness with h over without, below 1).

Applied either
  ``all``     every ``every`` steps, h(raw) of every row not encoded in the step just taken (its
              write-back, age = that step, or a refresh, age = the next) is written to the store
              (ages kept: moved, not re-encoded), so indexes on it (tree, IVF prefilter) follow; or
  ``scored``  the store keeps raw embeddings and every read of it (the sampling pass, cross logits)
              goes through h, except for the rows encoded in the step just taken, so only the rows a
              sampler scores are corrected (cache, exact,
              prefiltered cache; not the tree, whose bounds hold for the stored rows, nor ance,
              which draws from a snapshot of the store).
h never sees the training loss (its outputs reach the sampler without gradient), and the drift loss
never reaches the towers (both sides are detached). Logged: ``corrector_loss`` (this step's pairs
before the update), ``corrector_before`` / ``corrector_after`` (their staleness without and with h).

Example::  negminer train --negatives cache --refresh write-back --corrector --corrector-every 10
"""

from __future__ import annotations

import torch
from torch import nn

from negminer.refreshers.base import Fresh, Refresher, relative_change
from negminer.rng import generator, seed_of


class CorrectorNet(nn.Module):
    """h(x, age): x plus a residual MLP (last layer zero: the identity at start)."""

    def __init__(self, dim: int, width: int, depth: int = 2, age: bool = True):
        super().__init__()
        self.age = age
        layers, d_in = [], dim + int(age)
        for _ in range(max(1, depth) - 1):
            layers += [nn.Linear(d_in, width), nn.GELU()]
            d_in = width
        last = nn.Linear(d_in, dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([x, torch.log1p(age.float().clamp(min=0)).unsqueeze(1) / 4], 1) if self.age else x
        return x + self.mlp(inp)


class Corrector(Refresher):
    name = "corrector"

    def __init__(self, dim: int, apply: str = "all", every: int = 10, width: int = 0, depth: int = 2,
                 lr: float = 1e-3, warmup: int = 20, age: bool = True, buffer: int = 8192, batch: int = 512,
                 normalize: bool = False, chunk: int = 65536, seed: int = 0):
        super().__init__()
        if apply not in ("all", "scored"):
            raise ValueError(f"corrector: apply must be all or scored, not {apply!r}")
        if every < 1 or buffer < 1 or batch < 1 or warmup < 0:
            raise ValueError("corrector: every, buffer and batch must be >= 1, warmup >= 0")
        self.apply_mode, self.every, self.warmup, self.normalize, self.chunk = apply, every, warmup, normalize, chunk
        self.cap, self.batch = buffer, batch
        with torch.random.fork_rng(devices=[]):  # its initialisation is fixed by the seed alone
            torch.manual_seed(seed_of(seed, 0, "corrector-init"))
            self.net = CorrectorNet(dim, width or 2 * dim, depth, age)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.pairs_x = torch.zeros(buffer, dim)
        self.pairs_y = torch.zeros(buffer, dim)
        self.pairs_a = torch.zeros(buffer)
        self.filled, self.head, self.updates, self.ratio = 0, 0, 0, float("inf")
        self.raw: torch.Tensor | None = None
        self._new: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._captured: list[torch.Tensor] = []
        self._watched = None

    # ---- binding --------------------------------------------------------------------------
    def setup(self, store, pool, encode, seed: int = 0) -> None:
        super().setup(store, pool, encode, seed)
        if self.raw is None or len(self.raw) != store.n:  # each row's last encoder output and its step
            self.raw = store.emb.detach().to("cpu", copy=True)
            self.raw_step = store.age.clone()
        if self._watched is not store:
            store.listeners.append(self._written)
            self._watched = store
        if self.apply_mode == "scored":
            store.view = self.view

    def _written(self, rows, step) -> None:
        """Store listener: an encode (step given) pairs each row's previous raw embedding with the new one."""
        if rows is None or step is None:
            return
        new = self.store.emb[rows.to(self.store.emb.device)].float().cpu()
        self._new.append((self.raw[rows].float(), new, (step - self.raw_step[rows]).float()))
        self._captured.append(rows)
        self.raw[rows] = new.to(self.raw.dtype)
        self.raw_step[rows] = step

    def active(self, step: int) -> bool:
        """Past the warm-up, trained, and better than the identity on the newest pairs (scored before h
        trained on them; a moving average): a corrector that would make rows staler is not used."""
        return step >= self.warmup and self.updates > 0 and self.ratio < 1.0

    @torch.no_grad()
    def correct(self, x: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        y = self.net(x.float(), age)
        return nn.functional.normalize(y, dim=1) if self.normalize else y

    def view(self, emb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """What a sampler reads in ``scored`` mode: h of the stored (raw) embeddings of ``rows``."""
        if not self.active(self._step):
            return emb
        raw_step = self.raw_step[rows.cpu()]
        out = self.correct(emb.float().cpu(), (self._step - raw_step).float()).to(emb.device, emb.dtype)
        fresh = (raw_step >= self._step - 1).to(emb.device).unsqueeze(1)  # encoded in the step just taken
        return torch.where(fresh, emb, out)

    # ---- each step ------------------------------------------------------------------------
    _step = 0

    def after_step(self, f: Fresh) -> None:
        step = f.step + 1
        self._step = step
        self.stats = {}
        self._from_forward(f)
        if self._new:
            x, y, a = (torch.cat(t) for t in zip(*self._new))
            self._new, self._captured = [], []
            with torch.no_grad():
                self.stats = {"corrector_before": relative_change(x, y),
                              "corrector_after": relative_change(self.correct(x, a), y)}
            if self.updates:
                r = self.stats["corrector_after"] / max(self.stats["corrector_before"], 1e-12)
                self.ratio = r if self.ratio == float("inf") else 0.7 * self.ratio + 0.3 * r
            self.stats["corrector_ratio"] = self.ratio
            self._remember(x, y, a)
        if self.filled:
            self.stats["corrector_loss"] = self._train(step)
        if self.apply_mode == "all" and step % self.every == 0 and self.active(step):
            self._apply_all(step)

    def _from_forward(self, f: Fresh) -> None:
        """Pairs from the training forward (positives, drawn rows) for rows no store write paired this step
        (without write-back, the only pairs there are: the store is never re-encoded after the fill)."""
        rows, emb = f.pos_rows.cpu(), f.pos_emb
        if f.drawn is not None and f.drawn_emb is not None:
            rows, emb = torch.cat([f.drawn.cpu(), rows]), torch.cat([f.drawn_emb, f.pos_emb.to(f.drawn_emb.device)])
        done = torch.cat(self._captured) if self._captured else torch.zeros(0, dtype=torch.long)
        self._captured = []
        rows, first = torch.unique(rows, return_inverse=True)
        pick = torch.zeros(len(rows), dtype=torch.long).scatter_reduce_(0, first, torch.arange(len(first)), "amax")
        keep = ~torch.isin(rows, done) & (self.store.age[rows] >= 0)
        if bool(keep.any()):
            r, y = rows[keep], emb[pick[keep].to(emb.device)].detach().float().cpu()
            self._new.append((self.raw[r].float(), y, (f.step + 1 - self.raw_step[r]).float()))

    def _remember(self, x, y, a) -> None:
        x, y, a = x[-self.cap:], y[-self.cap:], a[-self.cap:]
        at = (self.head + torch.arange(len(x))) % self.cap
        self.pairs_x[at], self.pairs_y[at], self.pairs_a[at] = x, y, a
        self.head = int((self.head + len(x)) % self.cap)
        self.filled = min(self.cap, self.filled + len(x))

    def _train(self, step: int) -> float:
        g = generator(self.seed, step, "corrector")
        i = torch.randint(self.filled, (min(self.batch, self.filled),), generator=g)
        x, y, a = self.pairs_x[i], self.pairs_y[i], self.pairs_a[i]
        with torch.enable_grad():
            pred = self.net(x, a)
            loss = ((pred - y).pow(2).sum(1) / y.pow(2).sum(1).clamp(min=1e-12)).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.updates += 1
        return float(loss.detach())

    def _apply_all(self, step: int) -> None:
        rows = self.pool_rows()
        rows = rows[self.store.age[rows] < step - 1]  # encoded in the step just taken (write-back: age step - 1)
        for s in range(0, len(rows), self.chunk):
            r = rows[s:s + self.chunk]
            self.store.write(r, self.correct(self.raw[r].float(), (step - self.raw_step[r]).float()), None)

    # ---- checkpoint -----------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        t = {f"corrector.net.{k}": v.detach().clone() for k, v in self.net.state_dict().items()}
        for i, prm in enumerate(self.net.parameters()):
            for k, v in self.opt.state.get(prm, {}).items():
                t[f"corrector.opt.{i}.{k}"] = v.detach().clone().reshape(-1) if v.dim() == 0 else v.detach().clone()
        t.update({"corrector.raw": self.raw, "corrector.raw_step": self.raw_step, "corrector.pairs_x": self.pairs_x, "corrector.pairs_y": self.pairs_y,
                  "corrector.pairs_a": self.pairs_a})
        return t, {"filled": self.filled, "head": self.head, "updates": self.updates, "step": self._step,
                   "ratio": self.ratio if self.ratio != float("inf") else None}

    def load_state(self, t: dict, meta: dict) -> None:
        self.net.load_state_dict({k[len("corrector.net."):]: v for k, v in t.items() if k.startswith("corrector.net.")})
        params = list(self.net.parameters())
        self.opt.state.clear()
        for k, v in t.items():
            if k.startswith("corrector.opt."):
                i, name = k[len("corrector.opt."):].split(".", 1)
                self.opt.state[params[int(i)]][name] = v.reshape(()) if name == "step" else v.clone()
        self.raw, self.raw_step = t["corrector.raw"].clone(), t["corrector.raw_step"].clone()
        self.pairs_x, self.pairs_y, self.pairs_a = (t[f"corrector.{k}"].clone() for k in ("pairs_x", "pairs_y", "pairs_a"))
        self.filled, self.head, self.updates, self._step = meta["filled"], meta["head"], meta["updates"], meta["step"]
        self.ratio = float("inf") if meta.get("ratio") is None else meta["ratio"]
        self._new, self._captured = [], []


__all__ = ["Corrector", "CorrectorNet"]
