"""ZeroGPU on Hugging Face Spaces: GPU-bound work runs under `spaces.GPU` when present.

ZeroGPU runs the task in another process and pickles its arguments, so the task takes only
plain data (no callbacks, no events): live progress and the Stop flag are not available there.
"""

from __future__ import annotations

from collections.abc import Callable

from clipure_core import InputError, parse_labels

from .service import PlaygroundRequest, attacked_models, estimated_queries

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
    """A GPU lease that fits the request: the model queries its progress bar counts, where
    each query through an attacked CLIPure-Diff also runs its prior `diff_steps` times. A
    request the engine will refuse gets the base lease (it fails in seconds, with its
    message)."""
    try:
        config = request.attack_config()
        labels = len(parse_labels(request.labels)[0])
        steps = int(request.purifier_settings().get("clipure_diff", {}).get("steps", 10))
    except InputError:
        return BASE_SECONDS
    attacked = attacked_models(request.threat, request.defenses)
    queries = estimated_queries(config, attacked, labels)
    if "clipure_diff" in attacked:
        queries *= 1 + steps
    return int(min(MAX_SECONDS, BASE_SECONDS + SECONDS_PER_QUERY * queries))


def gpu_task(function: Callable) -> Callable:
    """`function` itself without ZeroGPU; wrapped in spaces.GPU with a fitted duration on it."""
    if spaces is None:
        return function
    return spaces.GPU(duration=requested_seconds)(function)
