"""The rule table: torch-free, every declared part is implemented, and it decides what combines."""

import subprocess
import sys

import pytest

from negminer import rules
from negminer.config import TrainConfig
from negminer.errors import ConfigError
from negminer.samplers import build_sampler, sampler_class


def test_checking_a_configuration_needs_no_torch():
    code = ("import sys; from negminer import rules; from negminer.config import TrainConfig; "
            "rules.describe(TrainConfig(negatives='cache', margin=0.1)); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", rules.NAMES["sampler"])
def test_every_declared_sampler_is_implemented(name):
    cls = sampler_class(name)
    s = build_sampler(TrainConfig(negatives=name), mined=[[1, 2]])
    assert isinstance(s, cls) and s.name == name
    part = rules.PARTS[("sampler", name)]
    assert bool(s.k) == ("draws" in part.gives)
    assert s.needs_store == ("store" in part.gives) or name in ("inbatch", "all", "mined")


def test_the_legal_grid_is_what_the_rules_allow():
    from grid import legal_cases

    cases = legal_cases()
    assert 500 < len(cases) < 700
    assert not any(c["sampler"] == "uniform" and c["margin"] is not None for c in cases)  # uniform has no scores
    assert not any(c["sampler"] == "prefilter" and c["shared"] for c in cases)           # no cross pi
    assert not any(c["sampler"] == "mined" and (c["margin"] is not None or c["replacement"]) for c in cases)


@pytest.mark.parametrize("opts,needle", [
    (dict(negatives="cache", memory="contaccum", accumulation=2), "inclusion probabilities are unknown"),
    (dict(negatives="exact", selection="topk", loss="cache-surrogate"), "--selection topk takes the exact top k"),
    (dict(negatives="cache", prefilter_top=64, share_negatives=True), "cannot correct --prefilter-top"),
    (dict(negatives="inbatch", refresh="nystrom"), "reads no store"),
    (dict(negatives="mined", margin=0.1), "negminer mine"),
    (dict(negatives="ance", replacement=True), "takes distinct negatives"),
    (dict(negatives="all", memory="gradcache"), "already encodes its targets in chunks"),
    (dict(batching="ngame", ngame_cluster_size=12, ngame_curriculum="1,2"), "power of two"),
])
def test_rules_refuse_with_the_reason(opts, needle):
    cfg = TrainConfig(**{"batch_size": 24, **opts})
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        rules.check(cfg)
    assert not rules.legal(cfg)


def test_options_no_part_reads_are_notes():
    p = rules.check(TrainConfig(negatives="inbatch", cache_size=100, topk_k=3))
    assert any("--cache-size" in n for n in p.notes) and any("--topk-k" in n for n in p.notes)
    assert rules.check(TrainConfig(negatives="cache", cache_size=100)).notes == []
