"""ZeroGPU on Hugging Face Spaces: GPU-bound work runs under `spaces.GPU` when present."""

from __future__ import annotations

from collections.abc import Callable

try:  # only installed on Spaces
    import spaces
except ImportError:
    spaces = None

BASE_SECONDS = 20
SECONDS_PER_QUERY = 0.05
MAX_SECONDS = 300


def requested_seconds(choice, image, request, *_args) -> int:
    """A GPU lease that fits the request: attack steps x EOT x attacked models."""
    attacked = 1 + (len(request.defenses) if request.threat != "transfer" else 0)
    queries = int(request.steps) * int(request.eot_samples) * attacked
    if request.method in ("apgd-t", "autoattack"):
        queries *= 10
    return int(min(MAX_SECONDS, BASE_SECONDS + SECONDS_PER_QUERY * queries))


def gpu_task(function: Callable) -> Callable:
    """`function` itself without ZeroGPU; wrapped in spaces.GPU with a fitted duration on it."""
    if spaces is None:
        return function
    return spaces.GPU(duration=requested_seconds)(function)
