"""The pixel gradient an attacker sees, and how it compares with the exact one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..seeding import seeded


@dataclass(frozen=True)
class GradientStats:
    """One gradient of the CE loss w.r.t. the pixels, beside the exact ('full') one.

    `linf_progress` = <sign(g), g_full> / ||g_full||_1: how much of the best first-order loss
    gain of an L-inf step along sign(g) this gradient delivers (1: all of it, 0: none,
    negative: the loss falls). The direction fields are None when either gradient is exactly
    zero (no direction)."""

    condition: str
    model: str
    norm: float
    zero_fraction: float
    cos_to_full: float | None
    sign_agreement_with_full: float | None
    linf_progress: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def pixel_gradient(
    model: nn.Module, pixels: torch.Tensor, label: torch.Tensor, seed: int, samples: int = 1
) -> torch.Tensor:
    """d CE(model(pixels), label) / d pixels, averaged over `samples` seeded forward passes
    (for a random model), as float32 on the pixels' device."""
    x = pixels.detach().clone().requires_grad_(True)
    total = torch.zeros_like(x)
    with seeded(seed), torch.enable_grad():
        for _ in range(samples):
            loss = F.cross_entropy(model(x), label)
            (grad,) = torch.autograd.grad(loss, x)
            total += grad.float()
    return (total / samples).detach()


def pixels_seen(
    to_model: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    """Which pixels of tensors shaped `like` reach the model through `to_model` (the attack's
    resize and centre crop: a native-resolution photo's cropped border never does), as a
    boolean mask: where the resize of a mid-grey image has a non-zero gradient."""
    x = torch.full_like(like, 0.5, dtype=torch.float32).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(to_model(x).sum(), x)
    return grad != 0


def compare(
    condition: str,
    model: str,
    gradient: torch.Tensor,
    full: torch.Tensor,
    seen: torch.Tensor | None = None,
) -> GradientStats:
    """Size and sparsity of `gradient`, and its direction against the exact gradient `full`
    (computed in float64: attenuated gradients of 1e-17 square to below float32's range).
    `seen` (`pixels_seen`) limits the share of zeros and of equal signs to the pixels the
    model sees; pixels it never sees have no gradient under any defence."""
    g, reference = gradient.double().flatten(), full.double().flatten()
    if seen is not None:
        mask = seen.flatten()
        g, reference = g[mask], reference[mask]
    norm, reference_norm = float(g.norm()), float(reference.norm())
    cos = sign = progress = None
    if norm > 0 and reference_norm > 0:
        # not F.cosine_similarity: its eps clamps the product of norms, which can be ~1e-17
        cos = float(g @ reference) / (norm * reference_norm)
        sign = float((g.sign() == reference.sign()).double().mean())
        progress = float(g.sign() @ reference) / float(reference.abs().sum())
    return GradientStats(
        condition=condition,
        model=model,
        norm=norm,
        zero_fraction=float((g == 0).double().mean()),
        cos_to_full=cos,
        sign_agreement_with_full=sign,
        linf_progress=progress,
    )
