"""Pixel tensors: 8-bit quantisation inside a threat-model ball, PIL conversion, norms."""

from __future__ import annotations

import torch
from PIL import Image

LEVELS = 255
_TOLERANCE = 1e-4  # in 8-bit levels: absorbs float error so that eps = k/255 allows k levels
_BISECTION_STEPS = 30


def pil_to_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a (3, H, W) float tensor in [0, 1] (exact multiples of 1/255)."""
    data = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).contiguous().float() / LEVELS


def pixels_to_pil(pixels: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image (rounded to the nearest level)."""
    levels = (pixels.detach().float().cpu().clamp(0, 1) * LEVELS).round().to(torch.uint8)
    return Image.fromarray(levels.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def perturbation_norms(clean: torch.Tensor, adversarial: torch.Tensor) -> dict[str, float]:
    """L-inf and L2 size of adversarial - clean, in [0, 1] pixel units (largest over a batch)."""
    delta = (adversarial - clean).detach().float().flatten(1)
    return {
        "linf": float(delta.abs().amax(dim=1).max()),
        "l2": float(delta.norm(dim=1).max()),
    }


def quantize_in_ball(
    clean: torch.Tensor, adversarial: torch.Tensor, norm: str, eps: float
) -> torch.Tensor:
    """Round adversarial pixels to 8 bits without leaving the eps-ball around `clean`.

    `clean` must lie on the 8-bit grid (as `Backbone.prepare` returns it). Plain rounding can
    step past eps (L-inf with eps not a multiple of 1/255, or L2); the result here never does:
    L-inf levels are clipped to floor(255 eps); an L2 sample that rounding pushed outside the
    ball is shrunk by the largest factor s in [0, 1] with ||round(s delta)|| <= eps (found by
    bisection: the rounded norm grows with s), which keeps nearly all of the budget.
    """
    clean_levels = (clean * LEVELS).round()
    delta = (adversarial.detach() - clean) * LEVELS
    rounded = delta.round()
    if norm == "linf":
        bound = float(int(eps * LEVELS + _TOLERANCE))
        rounded = rounded.clamp(-bound, bound)
    elif norm == "l2":
        rounded = _shrink_into_l2_ball(delta.flatten(1), eps * LEVELS + _TOLERANCE)
        rounded = rounded.view_as(delta)
    else:
        raise ValueError(f"unknown norm {norm!r}")
    levels = (clean_levels + rounded).clamp(0, LEVELS)
    return levels / LEVELS


def _shrink_into_l2_ball(delta: torch.Tensor, bound: float) -> torch.Tensor:
    """round(s * delta) per row, with the largest s in [0, 1] keeping its norm <= bound."""
    low = torch.zeros(delta.shape[0], 1, device=delta.device)
    high = torch.ones_like(low)
    fits = (delta.round().norm(dim=1, keepdim=True) <= bound).float()
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        inside = (delta * middle).round().norm(dim=1, keepdim=True) <= bound
        low, high = torch.where(inside, middle, low), torch.where(inside, high, middle)
    scale = fits + (1 - fits) * low
    return (delta * scale).round()


def amplified_perturbation(
    clean: Image.Image, adversarial: Image.Image
) -> tuple[Image.Image, float]:
    """The perturbation as a viewable image: grey + delta * gain, gain chosen so that the
    largest |delta| reaches black or white. Returns (image, gain); gain 0 means no change."""
    delta = pil_to_pixels(adversarial) - pil_to_pixels(clean)
    largest = float(delta.abs().max())
    gain = 0.5 / largest if largest > 0 else 0.0
    return pixels_to_pil(0.5 + gain * delta), gain
