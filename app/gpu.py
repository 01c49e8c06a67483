"""ZeroGPU on Hugging Face Spaces: GPU-bound work runs under `spaces.GPU` when present.

ZeroGPU runs the task in another process and pickles its arguments, so the task takes only
plain data (no callbacks, no events): live progress and the Stop flag are not available there.
"""

from __future__ import annotations

from collections.abc import Callable

from .service import PlaygroundRequest

try:  # only installed on Spaces
    import spaces
except ImportError:
    spaces = None

BASE_SECONDS = 20
SECONDS_PER_QUERY = 0.05
MAX_SECONDS = 300


def zero_gpu() -> bool:
    return spaces is not None


def requested_seconds(choice: object, image: object, request: PlaygroundRequest) -> int:
    """A GPU lease that fits the request: model queries of the attacks, where each query
    through an attacked CLIPure-Diff also runs its prior `diff_steps` times."""
    adaptive = request.threat != "transfer"
    attacked = 1 + (len(request.defenses) if adaptive else 0)
    queries = int(request.steps) * int(request.eot_samples) * attacked
    if request.method in ("apgd-t", "autoattack"):
        queries *= 10
    if adaptive and "clipure_diff" in request.defenses:
        queries *= 1 + int(request.diff_steps)
    return int(min(MAX_SECONDS, BASE_SECONDS + SECONDS_PER_QUERY * queries))


def gpu_task(function: Callable) -> Callable:
    """`function` itself without ZeroGPU; wrapped in spaces.GPU with a fitted duration on it."""
    if spaces is None:
        return function
    return spaces.GPU(duration=requested_seconds)(function)
