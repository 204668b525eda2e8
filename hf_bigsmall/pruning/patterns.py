"""`"N:M"` sparsity patterns: N pruned of every M consecutive input weights of a row (`"2:4"`: half)."""

from __future__ import annotations

import re

PATTERN = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """`"2:4"` -> `(2, 4)`: N pruned in every M consecutive input weights, with `0 < N < M`."""
    match = PATTERN.fullmatch(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ValueError(f"pattern={pattern!r} is not of the form 'N:M' (N pruned of every M weights), e.g. '2:4'.")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(
            f"pattern={pattern!r} needs 0 < N < M (N pruned of every M consecutive weights): e.g. '2:4' or '4:8'."
        )
    return n, m

