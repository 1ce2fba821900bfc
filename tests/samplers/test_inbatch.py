import torch

from negminer.pipeline import inbatch_mask
from negminer.types import Exclusions


def test_mask_hides_other_positives_and_duplicate_targets():
    # query 0 has positives {3, 5}; query 1 drew 5 (a positive of query 0); query 2 drew 3 again
    pos_rows = torch.tensor([3, 5, 3, 9])
    m = inbatch_mask(pos_rows, Exclusions([{3, 5}, {5}, {3}, {9}], 10))
    assert m.diagonal().all()
    assert m[0, 1] and m[0, 2] and not m[0, 3]
    assert m[2, 0] and not m[2, 1]
    assert not m[1, 0] and not m[3, 0]
