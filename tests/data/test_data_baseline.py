import math

import numpy as np
import pytest

from kiln.data.baseline import unigram_cross_entropy
from kiln.data.dataset import TokenDataset
from kiln.data.splits import split_view

from .conftest import write_dataset


def test_unigram_baseline_of_a_two_token_language(tmp_path):
    """Every document is 1,2,1,2,... (500 each) then EOS: the baseline is the entropy of those frequencies."""
    docs = [np.tile([1, 2], 500) for _ in range(40)]
    ds = TokenDataset.open(write_dataset(tmp_path / "ds", docs))
    train, val = split_view(ds, "train", 0.2), split_view(ds, "val", 0.2)
    vocab = 3  # ids 0, 1, 2: the smoothing barely moves the frequencies
    n_train = train.num_documents
    counts = {1: 500 * n_train, 2: 500 * n_train, 0: n_train}
    total = sum(counts.values())
    p = {t: (c + 1) / (total + vocab) for t, c in counts.items()}
    expected = -(500 * math.log(p[1]) + 500 * math.log(p[2]) + math.log(p[0])) / 1001
    assert unigram_cross_entropy([train], [val], vocab) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(math.log(2), abs=0.02)
