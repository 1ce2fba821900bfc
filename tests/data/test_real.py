"""The real datasets in ../shared/data load with the counts their README gives."""

import pytest

from negminer.data import load_dataset

COUNTS = {  # targets, {split: queries with positives}
    "scifact": (5183, {"train": 809, "test": 300}),
    "nfcorpus": (3395, {"train": 2569, "dev": 325, "test": 325}),
    "gcide-rd": (84478, {"test": 12658}),
    "gcide-senses": (126046, {}),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_real_dataset_loads(shared_data, name):
    ds = load_dataset(shared_data / name)
    targets, splits = COUNTS[name]
    assert ds.num_targets == targets
    for split, n in splits.items():
        assert len(ds.positives(split)) == n
    assert all(t.strip() for t in ds.target_inputs()[:1000])
