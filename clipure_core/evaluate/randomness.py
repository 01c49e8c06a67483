"""Which models are stochastic: AutoAttack's randomness check, on embeddings."""

from __future__ import annotations

import torch

from ..purifiers import Purifier
from ..seeding import seeded

_PROBE_SEEDS = (1, 2)


@torch.no_grad()
def is_stochastic(purifier: Purifier, embeddings: torch.Tensor) -> bool:
    """Whether `purifier` maps the (N, D) `embeddings` differently under two seeds (then its
    attacks need EOT and its evaluation several draws). The global RNG is left as it was."""
    outputs = []
    for seed in _PROBE_SEEDS:
        with seeded(seed):
            outputs.append(purifier(embeddings.clone()))
    return not torch.equal(outputs[0], outputs[1])
