"""Image encodings remembered within one run (the audit's), so a repeated one costs nothing.

Inside `remembering_encodings()`, an image encoder's forward without autograd on pixels it
has already encoded (the same encoder, the same values, shape and dtype) returns the
remembered embedding instead of running again. The audit meets such repeats all the time:
an attack's end point is judged by the attack, traced by loss_progress, judged again by the
8-bit rounding, and its rounded image is then encoded for the threat matrix. The result is
the one the encoder would give: the same input through the same computation in the same
process, on the same batch shape, gives the same bits (docs/development.md); only the
forward is saved. Encoders draw no random numbers, so skipping one leaves every random
draw of a defence or an attack as it was. Forwards with autograd on are never remembered,
nor those inside `fresh_encodings()` (the audit's randomness probe encodes twice on purpose).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_MEMO: ContextVar[dict | None] = ContextVar("encoding_memo", default=None)


@contextmanager
def remembering_encodings() -> Iterator[None]:
    """Remember no-grad image encodings until the block ends."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


@contextmanager
def fresh_encodings() -> Iterator[None]:
    """Encode afresh until the block ends (a measurement of the encoder's own repeatability),
    leaving what was remembered as it was."""
    token = _MEMO.set(None)
    try:
        yield
    finally:
        _MEMO.reset(token)


def encoded(
    encoder: object, pixels: torch.Tensor, encode: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """`encode()`, the encoding of `pixels` by `encoder`, remembered inside
    `remembering_encodings()` when autograd is off (a copy is returned: callers may write)."""
    memo = _MEMO.get()
    if memo is None or torch.is_grad_enabled():
        return encode()
    values = pixels.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
    key = (id(encoder), pixels.dtype, tuple(pixels.shape), hashlib.sha256(values).digest())
    if key not in memo:
        memo[key] = (encoder, encode())  # the encoder is held: its id stays its own
    return memo[key][1].clone()
