"""MinHash LSH (`data.dedup`): signatures estimate Jaccard similarity, the index finds a similar
document, and the band/row choice puts the S-curve at the threshold."""

from __future__ import annotations

import numpy as np

from llmkit.data.dedup import MinHashLSH, lsh_bands
from tests.test_data_filters import pseudo_words


def test_minhash_estimates_jaccard():
    lsh = MinHashLSH(num_perm=256, threshold=0.5, shingle_size=1)
    a = pseudo_words(400, 1)
    b = a[:300] + pseudo_words(100, 2)  # Jaccard 300 / 500 = 0.6
    sa, sb = lsh.signature(a), lsh.signature(b)
    assert abs(np.mean(sa == sb) - 0.6) < 0.1
    lsh.insert(sa)
    assert lsh.query(sb) == 0
    assert lsh.query(lsh.signature(pseudo_words(400, 3))) is None
    b, r = lsh_bands(0.8, 128)
    assert b * r <= 128 and 0.7 < (1 / b) ** (1 / r) < 0.9  # the S-curve's midpoint near 0.8
    assert 1 - (1 - 0.9 ** r) ** b > 0.99  # a 0.9-similar pair is almost surely a candidate
