"""Run under torchrun by test_sharded_draw.py: each rank scores its shard of a store (small chunks and noise
blocks, so shards span several of each), the store replicated or sharded (each rank holding its rows);
rank 0 writes the draws of the sharded pass and of a pass over a whole store in this process, for the
test to compare (same draws) and to count (chi-square)."""

import json
import sys

import torch

from negminer import dist
from negminer.samplers import Batch, Exclusions, base
from negminer.samplers.cache import CacheSampler
from negminer.samplers.exact import ExactSampler
from negminer.store import TargetStore

out, trials, held = sys.argv[1], int(sys.argv[2]), sys.argv[3]  # held: replicated | sharded (rows per rank)
d = dist.init_from_env(timeout_s=60)
base.NOISE_BLOCK = 256
n, dim = 700, 8
E = torch.nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
whole, store = (TargetStore([str(i) for i in range(n)], [str(i) for i in range(n)], dim,
                            shard=d if held == "sharded" and i else None) for i in (0, 1))
for st in (whole, store):
    st.write(torch.arange(n), E, 0)
    st.chunk_size = lambda: 64
assert (held == "sharded") == (len(store.emb) < n)
pos_rows = torch.tensor([3, 360, 511])  # on rank 0, rank 1, and a block boundary
q = E[[5, 400, 600]] * 1.0
excl = [{3, 7}, {360, 1}, {511, 512}]
rec = {"n": n, "first": [], "slots": [], "same": True, "max_diff": 0.0}
for replacement in (False, True):
    s = ExactSampler(4, replacement=replacement)
    s.want_log_z = True
    for t in range(trials):
        mk = lambda dd: Batch(t, pos_rows, Exclusions(excl, n), E[pos_rows], torch.Generator().manual_seed(t), 8.0, dist=dd)
        a = s.sample(q, mk(d), store)
        if not replacement:
            b = s.sample(q, mk(None), whole)
            rec["same"] &= torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
            for x, y in ((a.log_pi, b.log_pi), (a.pool_log_pi, b.pool_log_pi), (a.log_z, b.log_z)):
                fin = torch.isfinite(y)
                rec["same"] &= torch.equal(fin, torch.isfinite(x))
                rec["max_diff"] = max(rec["max_diff"], float((x[fin] - y[fin]).abs().max()))
            rec["first"].append(a.ids[:, 0].tolist())
        else:
            rec["slots"].append(a.ids.tolist())
            rec["log_z"] = a.log_z.tolist()
            rec["pool_log_pi"] = a.pool_log_pi.tolist()
    rec["rank_agree"] = dist.current().same(torch.tensor(rec["slots"][-1] if replacement else rec["first"][-1]))
# a cache of 300 of the rows (sorted candidate rows, split where the shards' rows fall)
c = CacheSampler(4, cache_size=300, seed=1)
c.setup(store, None, 0)
c.want_log_z = True
for t in range(50):
    mk = lambda dd: Batch(t, pos_rows, Exclusions(excl, n), E[pos_rows], torch.Generator().manual_seed(t), 8.0, dist=dd)
    a, b = c.sample(q, mk(d), store), c.sample(q, mk(None), whole)
    rec["same"] &= torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
    rec["max_diff"] = max(rec["max_diff"], float((a.log_z - b.log_z).abs().max()))
if d.main:
    json.dump(rec, open(out, "w"))
dist.shutdown()
