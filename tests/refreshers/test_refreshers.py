"""Which refreshers a configuration gets, full refreshes on schedule, and indexes that follow the store."""

import pytest
import torch
from samplerkit import batch, encoder, make_store, unit

from negminer import rules
from negminer.config import resolve
from negminer.errors import ConfigError
from negminer.refreshers import Fresh, Full, refresh_names
from negminer.samplers import AnceSampler


@pytest.mark.parametrize("opts,names", [
    ({"negatives": "cache"}, ["write-back"]),
    ({"negatives": "cache", "refresh_fraction": 0.01}, ["write-back", "fraction"]),
    ({"negatives": "cache", "write_back": "none", "refresh_fraction": 0.01}, ["fraction"]),
    ({"negatives": "cache-stream"}, ["write-back"]),
    ({"negatives": "exact"}, ["full"]),
    ({"negatives": "ance"}, ["full"]),
    ({"negatives": "inbatch"}, []),
    ({"negatives": "cache", "refresh": "auto,nystrom"}, ["write-back", "nystrom"]),
    ({"negatives": "exact", "refresh": "nystrom,write-back"}, ["write-back", "nystrom"]),
    ({"negatives": "ance", "refresh": "fraction", "refresh_fraction": 0.1}, ["fraction"]),
    ({"negatives": "cache", "corrector": True}, ["write-back", "corrector"]),
    ({"negatives": "cache", "refresh": "none", "corrector": True}, ["corrector"]),
    ({"negatives": "cache", "refresh": "none"}, []),
    ({"negatives": "exact", "refresh": "corrector,full"}, ["full", "corrector"]),
])
def test_refresh_names(opts, names):
    assert refresh_names(resolve(opts)) == names


@pytest.mark.parametrize("opts,why", [
    ({"negatives": "cache", "refresh": "sometimes"}, "unknown refresher"),
    ({"negatives": "uniform", "refresh": "full"}, "reads no store"),
    ({"negatives": "cache-stream", "refresh": "auto,nystrom"}, "its refresher is write-back"),
    ({"negatives": "cache", "refresh": "fraction"}, "--refresh-fraction > 0"),
    ({"negatives": "cache", "refresh": "write-back", "write_back": "none"}, "--write-back none"),
    ({"negatives": "cache", "refresh": "nystrom", "nystrom_every": 0}, "--nystrom-every 0: must be >= 1"),
    ({"negatives": "uniform", "corrector": True}, "reads no store"),
    ({"negatives": "tree", "corrector": True, "corrector_apply": "scored"}, "bounds hold for the stored rows"),
    ({"negatives": "cache", "refresh": "auto,nystrom", "corrector": True, "corrector_apply": "scored"}, "move corrected rows"),
    ({"negatives": "cache", "corrector": True, "corrector_apply": "sometimes"}, "--corrector-apply 'sometimes'"),
])
def test_bad_refresh_options_are_refused(opts, why):
    with pytest.raises(ConfigError, match=why):
        rules.check(resolve(opts))


def test_full_refresh_every_r_steps_encodes_the_pool():
    E = unit(30, 8)
    store, model = make_store(E)
    r = Full(every=4)
    pool = torch.arange(10)
    r.setup(store, pool, encoder(store, model))
    for step in range(8):
        r.after_step(Fresh(step, torch.tensor([0]), E[:1]))
    assert store.target_encodes == 20  # before steps 4 and 8
    assert (store.age[:10] == 8).all() and (store.age[10:] == 0).all()


def test_ance_index_follows_store_writes():
    E = unit(40, 8, seed=1)
    store, model = make_store(E)
    s = AnceSampler(3, top=3)
    s.setup(store, model, 0, encode=encoder(store, model))
    q = E[[0]]
    b = batch(E, [0])
    before = set(s.sample(q, b, store).ids[0].tolist())
    far = torch.tensor([37, 38, 39])
    store.write(far, q.repeat(3, 1) * 0.99, 1)  # three rows move next to the query
    assert set(s.sample(q, b, store).ids[0].tolist()) == {37, 38, 39} != before
