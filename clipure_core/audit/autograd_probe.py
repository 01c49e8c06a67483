"""Count the autograd calls a prediction makes: a defence that differentiates while it predicts
(under torch.no_grad) optimises at inference time (AutoAttack flags such 'dynamic' defences)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode

AUTOGRAD_CALLS = (torch.autograd.grad, torch.autograd.backward, torch.Tensor.backward)


class AutogradCounter(TorchFunctionMode):
    """Within `with AutogradCounter() as counter:`, `counter.calls` counts the calls of
    torch.autograd.grad / backward made on this thread (torch routes them through the mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(
        self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> object:
        if func in AUTOGRAD_CALLS:
            self.calls += 1
        return func(*args, **(kwargs or {}))
