"""The suite's tolerance for float32 numbers computed twice in different ways.

Another batch size, thread count, process or device runs other kernels, which round
differently (Intel AVX-512 CPUs do per batch size), so such numbers agree to a relative 1e-5,
not bit for bit; decisions (class indices, statuses) are compared exactly. See
docs/development.md, "Testing rules".
"""

from __future__ import annotations

import torch

RTOL = 1e-5  # float32 numbers across batch sizes, thread counts, processes or devices


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest ||actual - expected|| / ||expected|| over rows (the last dimension)."""
    return float(((actual - expected).norm(dim=-1) / expected.norm(dim=-1)).max())
