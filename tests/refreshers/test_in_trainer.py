"""Every store-based sampler trains with every refresher, counts its encodes, and resumes exactly:
a run interrupted after a checkpoint and resumed logs the same curve and ends with the same store."""

import json

import pytest
import torch

from negminer.config import resolve
from negminer.train.trainer import Trainer
from runkit import Crash, CrashAt

SAMPLERS = {"cache": {"negatives": "cache"},
            "cache-prefilter": {"negatives": "cache", "prefilter_top": 16, "prefilter_nprobe": 2, "prefilter_rebuild": 3},
            "exact": {"negatives": "exact"},
            "tree": {"negatives": "tree", "tree_beam": 2, "tree_branching": 4, "tree_leaf_size": 8},
            "ance": {"negatives": "ance", "ance_top": 20}}
REFRESHERS = {"write-back": {"refresh": "write-back"},
              "fraction": {"refresh": "fraction", "refresh_fraction": 0.05, "refresh_order": "oldest"},
              "full": {"refresh": "full", "refresh_every": 3},
              "nystrom": {"refresh": "nystrom", "nystrom_landmarks": 24, "nystrom_every": 2},
              "corrector": {"refresh": "write-back", "corrector": True, "corrector_warmup": 2, "corrector_every": 2},
              "corrector scored": {"refresh": "write-back", "corrector": True, "corrector_apply": "scored",
                                   "corrector_warmup": 2},
              "corrector alone": {"refresh": "none", "corrector": True, "corrector_warmup": 2, "corrector_every": 2}}
# target encodes by the refresher over 6 steps on the 160-target tiny set (fill of 160 not included)
EXPECTED = {"write-back": 0, "fraction": 6 * 8, "full": 2 * 160, "nystrom": 3 * 24, "corrector": 0, "corrector scored": 0,
            "corrector alone": 0}
NAMES = {"corrector": ["write-back", "corrector"], "corrector scored": ["write-back", "corrector"],
         "corrector alone": ["corrector"]}


def make(tiny_beir, out, sampler, refresher, hooks=()):
    opts = {"data": str(tiny_beir), "out": str(out), "encoder": "static", "batch_size": 8, "lr": 0.05, "seed": 5,
            "quiet": True, "zero_shot": False, "query_max_length": 16, "target_max_length": 16, "num_negatives": 4,
            "steps": 6, "save_every": 3, "log_every": 1, **SAMPLERS[sampler], **REFRESHERS[refresher]}
    return Trainer(resolve(opts), hooks=list(hooks))


def curve(run):
    return [(r["step"], r["loss"], r["target_encodes"]) for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("refresher", list(REFRESHERS))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampler_x_refresher_trains_and_resumes(tiny_beir, tmp_path, sampler, refresher):
    if sampler == "tree" and refresher == "corrector scored":
        with pytest.raises(Exception, match="bounds hold for the stored rows"):
            make(tiny_beir, tmp_path / "full", sampler, refresher)
        return
    full = make(tiny_beir, tmp_path / "full", sampler, refresher)
    assert [r.name for r in full.refreshers] == NAMES.get(refresher, [refresher])
    full.run()
    log = curve(tmp_path / "full")
    assert len(log) == 6 and all(x[1] == x[1] for x in log)
    assert full.store.target_encodes == 160 + EXPECTED[refresher]
    crashed = make(tiny_beir, tmp_path / "again", sampler, refresher, hooks=[CrashAt(5)])
    with pytest.raises(Crash):
        crashed.run()
    resumed = make(tiny_beir, tmp_path / "again", sampler, refresher)
    resumed.run(resume=True)
    assert curve(tmp_path / "again") == log
    assert torch.equal(resumed.store.emb, full.store.emb) and torch.equal(resumed.store.age, full.store.age)
    if refresher.startswith("corrector"):  # h trained and was used, and resumed with its optimiser state
        h0, h1 = full.refreshers[-1].net.state_dict(), resumed.refreshers[-1].net.state_dict()
        assert all(torch.equal(h0[k], h1[k]) for k in h0) and float(h0["mlp.2.weight"].abs().sum()) > 0
