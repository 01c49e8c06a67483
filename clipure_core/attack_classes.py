"""torchattacks classes adapted to honest evaluation, and the random-noise control.

torchattacks' APGD, APGD-T and Square (like AutoAttack) first classify the clean batch once
and attack only the images that pass was right about. With a stochastic defence that one
noisy forward can be wrong by chance, and the image is then returned clean, never attacked,
and may well be counted robust by a later evaluation. The `EveryImage*` classes attack every
image they are given; everything else is torchattacks' own code.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn


class _AttackEveryImage:
    """Mixin: the pre-attack accuracy check of `perturb` sees every image as still correct.

    torchattacks' `perturb` asks `get_logits(x)` once, first, to find the images to attack;
    that one call is answered with logits whose top class is the label, so every image is
    attacked. All later calls reach the model.
    """

    _labels_for_check: torch.Tensor | None = None

    def perturb(self, x: torch.Tensor, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._labels_for_check = y
        try:
            return super().perturb(x, y, *args, **kwargs)
        finally:
            self._labels_for_check = None

    def get_logits(self, inputs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        labels = self._labels_for_check
        if labels is None:
            return super().get_logits(inputs, *args, **kwargs)
        self._labels_for_check = None
        return nn.functional.one_hot(labels, int(labels.max()) + 1).float()


class EveryImageAPGD(_AttackEveryImage, torchattacks.APGD):
    """torchattacks.APGD that attacks every image (see the module docstring)."""


class EveryImageAPGDT(_AttackEveryImage, torchattacks.APGDT):
    """torchattacks.APGDT that attacks every image (see the module docstring)."""


class EveryImageSquare(_AttackEveryImage, torchattacks.Square):
    """torchattacks.Square that attacks every image (see the module docstring)."""


class UniformNoise(torchattacks.attack.Attack):
    """Random noise of the attack's size: uniform in the L-inf ball, or uniform on the L2
    sphere. The control every attack must beat: it uses no information about the model."""

    def __init__(self, model: nn.Module, norm: str = "Linf", eps: float = 4 / 255) -> None:
        super().__init__("UniformNoise", model)
        self.norm, self.eps = norm, eps
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        if self.norm == "Linf":
            delta = (torch.rand_like(images) * 2 - 1) * self.eps
        else:
            direction = torch.randn_like(images)
            norms = direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = direction / norms * self.eps
        return (images + delta).clamp(0, 1).detach()
