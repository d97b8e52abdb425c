"""Edit distance between two token (or character) sequences, for self-correction measurements.

``levenshtein(a, b)``: the fewest unit-cost insertions, deletions and substitutions turning `a`
into `b` (D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] + [a_i != b_j])), by the
two-row dynamic programme: O(len(a) * len(b)) time, O(len(b)) memory.
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["levenshtein"]


def levenshtein(a: Sequence, b: Sequence) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]
