"""Groups from pairs: connected components, in numpy (label propagation with pointer jumping), so a million rows
and their pairs need no graph library and no Python loop per pair."""

from __future__ import annotations

import numpy as np


def components(rows: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row, the lowest row of its component: rows joined by a chain of pairs share a label."""
    labels = np.arange(rows, dtype=np.int64)
    if not len(a):
        return labels
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        np.minimum.at(labels, before, labels)  # a root takes its members' lowest label too
        while True:  # pointer jumping: every row straight to its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels
