"""CLIPure-Cos: ascend cos(z, null prompt) with the polar update (Zhang et al., ICLR 2025)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..backbone import Backbone
from .base import (
    BATCH_COUPLED,
    STEP_SIZE,
    STEPS,
    Purifier,
    StepCallback,
    null_prompt_embedding,
)
from .polar import check_gradient_mode, polar_step


def neg_cos_gradient(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d(-cos(z, t))/dz in closed form, (B, D); differentiable itself (for 'full' attacks)."""
    z_norm = z.norm(dim=-1, keepdim=True)
    t_hat = F.normalize(target, dim=-1).expand_as(z)
    cos = (z * t_hat).sum(dim=-1, keepdim=True) / z_norm
    return -(t_hat / z_norm - cos * z / z_norm**2)


def cos_purify(
    z: torch.Tensor,
    null_embedding: torch.Tensor,
    steps: int = STEPS.default,
    step_size: float = STEP_SIZE.default,
    *,
    batch_coupled: bool = BATCH_COUPLED.default,
    gradient: str = "full",
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Purify (B, D) image embeddings toward the (D,) null-prompt embedding; ||z|| is kept.

    `gradient` is "full" (differentiable through every step) or "paper" (inner gradient
    constant); BPDA is handled by `Purifier.forward`. `on_step(i, z_i)` sees z_0 ... z_steps.
    """
    if gradient not in ("full", "paper"):
        check_gradient_mode(gradient)
        raise ValueError("cos_purify takes gradient='full' or 'paper'; BPDA wraps it (Purifier).")
    if on_step is not None:
        on_step(0, z)
    for step in range(1, steps + 1):
        grad = neg_cos_gradient(z, null_embedding)
        if gradient == "paper":
            grad = grad.detach()
        z = polar_step(z, grad, step_size, batch_coupled)
        if on_step is not None:
            on_step(step, z)
    return z


class CosPurifier(Purifier):
    """CLIPure-Cos as a module: null prompt = the templates with an empty class, averaged."""

    name = "clipure_cos"
    title = "CLIPure-Cos"
    flag_prefix = "cos"
    settings_spec = (STEPS, STEP_SIZE, BATCH_COUPLED)

    def __init__(
        self,
        backbone: Backbone,
        templates: str | Sequence[str] = "ensemble",
        steps: int = STEPS.default,
        step_size: float = STEP_SIZE.default,
        batch_coupled: bool = BATCH_COUPLED.default,
    ) -> None:
        super().__init__(steps=steps, step_size=step_size)
        self.batch_coupled = bool(batch_coupled)
        self.register_buffer("null_embedding", null_prompt_embedding(backbone, templates))

    def purify(
        self, z: torch.Tensor, gradient: str, on_step: StepCallback | None = None
    ) -> torch.Tensor:
        # As in the reference, purify the unit-norm embedding (r = 1).
        return cos_purify(
            F.normalize(z, dim=-1),
            self.null_embedding,
            self.steps,
            self.step_size,
            batch_coupled=self.batch_coupled,
            gradient=gradient,
            on_step=on_step,
        )
