"""Count image-encoder passes: forwards and backwards, by precision and batch size.

    with PassCounter() as counter:
        run_audit(...)
    counter.counts  # {("forward", "float32", 1): 309, ("backward", "emulated", 1): 31, ...}

Every open_clip vision tower's forward is counted while the counter is active (the copies the
release conditions make too); a backward is counted when a gradient flows back into the
tower's output. The precision is 'float16' for a float16 tower, 'emulated' inside
`EmulatedHalf` (float16 emulated in float32 kernels), else 'float32'. The count is
deterministic, unlike a timing, so a test can pin it (tests/test_audit_passes.py) and the
bench can turn it into float32 forward+backward equivalents with unit costs it measures.
"""

from __future__ import annotations

from collections import Counter

import torch
from open_clip.transformer import VisionTransformer

from clipure_core import half_emulation

Pass = tuple[str, str, int]  # (forward | backward, precision, batch size)


class PassCounter:
    """A context manager counting every vision-tower pass while it is active."""

    def __init__(self) -> None:
        self.counts: Counter[Pass] = Counter()
        self._emulating = 0

    def __enter__(self) -> PassCounter:
        self._tower = VisionTransformer.forward
        self._emulated = half_emulation.EmulatedHalf.forward
        counter = self

        def tower(module, pixels, *args, **kwargs):
            output = counter._tower(module, pixels, *args, **kwargs)
            counter._count(module, pixels, output)
            return output

        def emulated(module, inputs):
            counter._emulating += 1
            try:
                return counter._emulated(module, inputs)
            finally:
                counter._emulating -= 1

        VisionTransformer.forward = tower
        half_emulation.EmulatedHalf.forward = emulated
        return self

    def __exit__(self, *exc: object) -> None:
        VisionTransformer.forward = self._tower
        half_emulation.EmulatedHalf.forward = self._emulated

    def _count(self, module, pixels: torch.Tensor, output: object) -> None:
        dtype = next(module.parameters()).dtype
        precision = "float16" if dtype == torch.float16 else "float32"
        precision = "emulated" if self._emulating else precision
        batch = int(pixels.shape[0])
        self.counts[("forward", precision, batch)] += 1
        first = output[0] if isinstance(output, tuple) else output
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.register_hook(lambda grad: self._backward(precision, batch))

    def _backward(self, precision: str, batch: int) -> None:
        self.counts[("backward", precision, batch)] += 1

    def table(self, per: int = 1) -> str:
        """One line per (kind, precision, batch size): its count (divided by `per`)."""
        return "\n".join(
            f"  {kind:8} {precision:8} batch {batch:3}: {n / per:g}"
            for (kind, precision, batch), n in sorted(self.counts.items())
        )
