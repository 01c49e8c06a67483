"""ZeroGPU on Hugging Face Spaces: GPU-bound work runs under `spaces.GPU` when present.

ZeroGPU runs the task in another process and pickles its arguments, so the task takes only
plain data (no callbacks, no events): live progress and the Stop flag are not available there.
"""

from __future__ import annotations

from collections.abc import Callable

from clipure_core import InputError, parse_labels
from clipure_core.purifiers import PURIFIERS

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
    """A GPU lease that fits the request: the model queries its progress bar counts, each
    weighed by what a query through its model costs (`Purifier.query_cost`: a query
    through CLIPure-Diff also runs its prior once per step). A request the engine will
    refuse gets the base lease (it fails in seconds, with its message)."""
    try:
        config = request.attack_config()
        labels = len(parse_labels(request.labels)[0])
        settings = request.purifier_settings()
    except InputError:
        return BASE_SECONDS
    queries = 0.0
    for name in attacked_models(request.threat, request.defenses):
        defense = name.partition("@")[0]  # a column on another backbone: DEFENSE@BACKBONE
        purifier = PURIFIERS.get(defense)
        chosen = settings.get(name, settings.get(defense, {}))
        cost = 1.0 if purifier is None else purifier.query_cost(chosen)
        queries += cost * estimated_queries(config, [name], labels)
    return int(min(MAX_SECONDS, BASE_SECONDS + SECONDS_PER_QUERY * queries))


def gpu_task(function: Callable) -> Callable:
    """`function` itself without ZeroGPU; wrapped in spaces.GPU with a fitted duration on it."""
    if spaces is None:
        return function
    return spaces.GPU(duration=requested_seconds)(function)
