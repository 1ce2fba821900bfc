"""Under torchrun each rank scores its shard of the store and the ranks merge their partial passes: without
replacement the merged draw is the draw of one pass over the whole store (same noise, same positions,
same weights); with replacement each slot picks a shard by its log-partition, and the draws follow the
global softmax (chi-square)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

SCRIPT = Path(__file__).with_name("sharded_draws.py")


def expected(rec):
    n = rec["n"]
    E = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    q = E[[5, 400, 600]]
    logits = (q @ E.T).double() * 8.0
    for i, ex in enumerate([{3, 7}, {360, 1}, {511, 512}]):
        logits[i, list(ex)] = -math.inf
    return logits


def chi2(draws, logits, bins=25):
    """p-value of draws against softmax(logits), the `bins` likeliest rows apart and the rest pooled."""
    p = logits.softmax(-1).numpy()
    top = np.argsort(-p)[:bins]
    counts = np.bincount(np.asarray(draws), minlength=len(p))
    obs = np.append(counts[top], counts.sum() - counts[top].sum())
    exp = np.append(p[top], 1 - p[top].sum()) * counts.sum()
    return chisquare(obs, exp).pvalue, chisquare(obs, np.full(len(obs), counts.sum() / len(obs))).pvalue


@pytest.mark.parametrize("kernel,held", [("1", "replicated"), ("0", "sharded")])  # compiled noise (a rank makes its
def test_sharded_draw_is_the_global_draw(tmp_path, kernel, held):                  # slice) and torch's (sliced)
    out = tmp_path / "draws.json"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(SCRIPT), str(out), "1000", held], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "NEGMINER_KERNEL": kernel})
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["same"] and rec["max_diff"] < 1e-5 and rec["rank_agree"]
    logits = expected(rec)
    first = np.array(rec["first"])            # [trials, 3]: first draw without replacement
    slots = np.array(rec["slots"])            # [trials, 3, 4]: draws with replacement
    for i in range(3):
        fit, uniform = chi2(first[:, i], logits[i])
        assert fit > 1e-3 and uniform < 1e-6, (i, fit, uniform)
        fit, uniform = chi2(slots[:, i].ravel(), logits[i])
        assert fit > 1e-3 and uniform < 1e-6, (i, fit, uniform)
    # merged log Z is the global one
    assert np.allclose(rec["log_z"], logits.logsumexp(-1).numpy(), atol=1e-4)
