"""Confidence intervals for accuracies (the Wilson score interval) and the exact McNemar
test for paired outcomes."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n
    successes. With no trials the proportion is unknown: (0, 1).
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}.")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def accuracy_summary(correct: int, total: int) -> dict:
    """{'correct', 'n', 'accuracy', 'ci95': [low, high]} (accuracy None when n is 0)."""
    low, high = wilson_interval(correct, total)
    return {
        "correct": correct,
        "n": total,
        "accuracy": correct / total if total else None,
        "ci95": [low, high],
    }


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes.

    `only_first` / `only_second` count the pairs where only the first / only the second
    outcome is a success (the discordant pairs; concordant pairs carry no information). Under
    the null hypothesis each discordant pair falls either way with probability 1/2, so the
    p-value is twice the binomial tail of the smaller count, at most 1.
    """
    if isinstance(only_first, bool) or isinstance(only_second, bool):
        raise ValueError("counts must be integers.")
    if min(only_first, only_second) < 0:
        raise ValueError(f"counts must be >= 0, got {only_first} and {only_second}.")
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    smaller = min(only_first, only_second)
    tail = sum(math.comb(discordant, k) for k in range(smaller + 1))
    return min(1.0, 2 * tail / 2**discordant)
