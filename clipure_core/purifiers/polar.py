"""The polar update CLIPure uses: rotate the unit direction of z, keep its norm.

    r = ||z||, u = z / r, g_u = r * dL/dz
    u <- normalise(u - eta * g_u / ||g_u||),  z <- r * u

How the inner gradient g enters the outer computation graph is the threat model's choice:
  "full"  - g stays in the graph: attacks differentiate exactly through every step;
  "paper" - g is a constant (the released evaluation code computed it without a graph);
  "bpda"  - the whole purification is the identity in the backward pass (see `Purifier`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRADIENT_MODES = ("full", "paper", "bpda")
_TINY = 1e-12


def polar_step(
    z: torch.Tensor, grad: torch.Tensor, step_size: float, batch_coupled: bool = False
) -> torch.Tensor:
    """One polar update of (B, D) embeddings `z` along the loss gradient `grad`.

    `batch_coupled=True` reproduces the reference code, which divides by the norm of the
    whole batch's gradient (so images in a batch influence each other); the default divides
    each sample by its own gradient norm, which does not depend on the batch.
    """
    radius = z.norm(dim=-1, keepdim=True)
    direction = z / radius
    grad_u = radius * grad
    scale = grad_u.norm() if batch_coupled else grad_u.norm(dim=-1, keepdim=True)
    direction = F.normalize(direction - step_size * grad_u / scale.clamp_min(_TINY), dim=-1)
    return radius * direction


def check_gradient_mode(gradient: str) -> None:
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"gradient mode {gradient!r}: use one of {', '.join(GRADIENT_MODES)}.")
