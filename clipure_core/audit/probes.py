"""Instruments for the checklist checks: an attack's loss at every query, and the two-class
model of the binarization test with an adversarial example known to lie inside the ball."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone

BOUNDARY = 0.5  # where the binarization boundary sits between the clean and the known point
SHARPNESS = 10.0  # the binary logit is SHARPNESS * margin: clean at -5, never saturated


class LossRecorder(nn.Module):
    """`model` recording the cross-entropy of `label` at the attack's gradient steps (no effect
    on it): forwards whose input requires a gradient. The forwards the strongest-point
    bookkeeping adds (`clipure_core.strongest`: the clean probes, judging a point) run without
    one and are left out; `record` adds a point explicitly (the attack's end)."""

    def __init__(self, model: nn.Module, label: torch.Tensor) -> None:
        super().__init__()
        self.model, self.label = model, label
        self.losses: list[float] = []
        self.train(model.training)  # torchattacks restores the wrapper's mode onto the model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixels)
        if pixels.requires_grad:
            self._append(logits)
        return logits

    @torch.no_grad()
    def record(self, pixels: torch.Tensor) -> None:
        """Record the loss at `pixels` whatever their gradient state."""
        self._append(self.model(pixels))

    def _append(self, logits: torch.Tensor) -> None:
        with torch.no_grad():
            self.losses.append(float(F.cross_entropy(logits.float(), self.label)))


def step_losses(losses: list[float], samples: int) -> list[float]:
    """Per-query losses averaged over each step's `samples` EOT draws."""
    return [sum(losses[i : i + samples]) / samples for i in range(0, len(losses), samples)]


class BinaryHead(nn.Module):
    """A two-class readout of an embedding, in place of the zero-shot head (it has the
    classifier's `backbone`, `logits_from_embeddings` and `forward`, so every threat's module
    can be built around it).

    margin(z) = <w, f - f_clean> / <w, f_known - f_clean> - BOUNDARY with f = z / ||z||:
    the clean photo sits at -0.5, the known point at +0.5; class 1 ("adversarial") wins when
    the margin is > 0. `w` is the direction to the known point with the directions to
    `inner` points removed, so random points of the ball stay at the clean photo's margin.
    """

    def __init__(
        self,
        backbone: Backbone,
        clean: torch.Tensor,
        known: torch.Tensor,
        inner: torch.Tensor,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        f_clean, f_known = F.normalize(clean.double(), dim=-1), F.normalize(known.double(), dim=-1)
        toward = f_known - f_clean
        if inner.shape[0]:
            basis = torch.linalg.qr((F.normalize(inner.double(), dim=-1) - f_clean).T).Q
            w = toward - basis @ (basis.T @ toward)
        else:
            w = toward
        if float(w @ toward) <= 1e-12 * float(toward @ toward):
            w = toward  # the known point's direction lies in the inner points' span
        self.register_buffer("w", w.float())
        self.register_buffer("origin", f_clean.float())
        self.scale = 1.0 / float(w @ toward)

    def margin(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) margins of (B, D) embeddings (> 0: classified as the adversarial class)."""
        f = F.normalize(z.float(), dim=-1)
        return (f - self.origin) @ self.w * self.scale - BOUNDARY

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        margin = self.margin(z)
        return torch.stack([torch.zeros_like(margin), SHARPNESS * margin], dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.backbone.encode_image(pixels))


def random_in_ball(pixels: torch.Tensor, norm: str, eps: float, count: int) -> torch.Tensor:
    """`count` random points of the eps-ball around (1, 3, S, S) `pixels` (L-inf: corners,
    L2: the sphere), inside [0, 1]; the caller seeds the draw."""
    shape = (count, *pixels.shape[1:])
    if norm == "linf":
        delta = eps * torch.randint(0, 2, shape, device=pixels.device).float().mul(2).sub(1)
    else:
        delta = torch.randn(shape, device=pixels.device)
        delta = eps * delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return (pixels + delta).clamp(0, 1)
