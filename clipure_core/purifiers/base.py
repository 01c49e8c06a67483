"""What every latent purifier shares: settings, validation and the BPDA wrapper."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..backbone import Backbone
from ..errors import InputError
from .polar import check_gradient_mode

# on_step(step, z, denoising_loss=None): called for z_0 ... z_steps
StepCallback = Callable[..., None]
MAX_PURIFY_STEPS = 1000


class Purifier(nn.Module):
    """Maps (B, D) image embeddings to purified ones. Subclasses implement `purify`."""

    name: str = ""
    title: str = ""

    def __init__(self, steps: int, step_size: float) -> None:
        super().__init__()
        valid_steps = isinstance(steps, int) and not isinstance(steps, bool)
        if not (valid_steps and 0 <= steps <= MAX_PURIFY_STEPS):
            raise InputError(f"{self.title} steps: an integer from 0 to {MAX_PURIFY_STEPS}.")
        if not (isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0):
            raise InputError(f"{self.title} step size: a finite number > 0.")
        self.steps = steps
        self.step_size = float(step_size)
        self.eval()  # inference only (a prior's dropout stays off)

    def settings(self) -> dict:
        return {"steps": self.steps, "step_size": self.step_size}

    @classmethod
    def resolve_settings(cls, backbone: Backbone, settings: dict) -> dict:
        """Settings with every default that depends on the environment made explicit (so that
        a cached purifier is reused only for the same effective settings)."""
        return dict(settings)

    def purify(
        self, z: torch.Tensor, gradient: str, on_step: StepCallback | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, z: torch.Tensor, gradient: str = "full", on_step: StepCallback | None = None
    ) -> torch.Tensor:
        """Purify `z`; with gradient="bpda" the backward pass treats purification as identity."""
        check_gradient_mode(gradient)
        if gradient == "bpda":
            purified = self.purify(z.detach(), "paper", on_step).detach()
            return z + (purified - z.detach())
        return self.purify(z, gradient, on_step)
