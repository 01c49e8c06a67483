"""Which images a run evaluates, and how they are cut into batches and shared among ranks.

Everything here is a pure function of (labels, n, seed, batch size), so every process of a
run, and every rerun, computes the same plan.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def stratified_subset(targets: Sequence[int], n: int, seed: int) -> list[int]:
    """A seeded random subset of `n` item indices, stratified by class, in a seeded order.

    Classes get n // K images each (K = classes present); the remainder goes to classes
    drawn at random, and a class with too few images gives its share to the others. Within
    a class the images are a random sample. The result is shuffled, so every batch mixes
    classes.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    rng = random.Random(seed)
    classes = sorted(by_class)
    for target in classes:
        rng.shuffle(by_class[target])
    quotas = _quotas({target: len(by_class[target]) for target in classes}, n, rng)
    chosen = [index for target in classes for index in by_class[target][: quotas[target]]]
    rng.shuffle(chosen)
    return chosen


def _quotas(sizes: dict[int, int], n: int, rng: random.Random) -> dict[int, int]:
    """Split n over classes as evenly as their sizes allow (ties broken by a seeded order)."""
    order = list(sizes)
    rng.shuffle(order)
    quotas = dict.fromkeys(sizes, 0)
    remaining = min(n, sum(sizes.values()))
    while remaining:
        open_classes = [target for target in order if quotas[target] < sizes[target]]
        share, extra = divmod(remaining, len(open_classes))
        for rank, target in enumerate(open_classes):
            take = min(share + (rank < extra), sizes[target] - quotas[target])
            quotas[target] += take
            remaining -= take
    return quotas


def plan_batches(count: int, batch_size: int) -> list[range]:
    """Positions 0..count-1 cut into consecutive batches of `batch_size` (the last shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}.")
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def assign(pending: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The pending batches rank `rank` runs: every world_size-th one, starting at `rank`.

    Over all ranks the shares are disjoint and cover `pending`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}.")
    return list(pending[rank::world_size])
