"""Zero-shot CLIP classifiers on pixels, undefended or composed with a latent purifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .prompts import parse_labels, resolve_templates
from .purifiers import Purifier
from .purifiers.base import StepCallback
from .text_embeddings import class_embeddings


class ZeroShotClassifier(nn.Module):
    """Pixels in [0, 1] -> logits = logit_scale * cos(image, class embedding)."""

    def __init__(
        self,
        backbone: Backbone,
        labels: str | Sequence[str],
        templates: str | Sequence[str] = "ensemble",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.labels, _ = parse_labels(labels)
        self.templates = resolve_templates(templates)
        self.register_buffer(
            "class_embeddings", class_embeddings(backbone, self.labels, self.templates)
        )
        self.eval()  # inference only: torchattacks restores this mode after every attack

    def logits_from_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        return self.backbone.logit_scale * F.normalize(z, dim=-1) @ self.class_embeddings.T

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.backbone.encode_image(pixels))

    def defended(self, purifier: Purifier, gradient: str = "full") -> DefendedClassifier:
        """This classifier with `purifier` between the image encoder and the class head."""
        return DefendedClassifier(self, purifier, gradient)


class DefendedClassifier(nn.Module):
    """encode -> purify -> classify, one differentiable module.

    `gradient` is how attacks see the purifier: "full", "paper" or "bpda" (see polar.py).
    The forward values are the same in every mode.
    """

    def __init__(
        self, classifier: ZeroShotClassifier, purifier: Purifier, gradient: str = "full"
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.purifier = purifier
        self.gradient = gradient
        self.eval()

    def logits_from_embeddings(
        self, z: torch.Tensor, on_step: StepCallback | None = None
    ) -> torch.Tensor:
        purified = self.purifier(z, gradient=self.gradient, on_step=on_step)
        return self.classifier.logits_from_embeddings(purified)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.classifier.backbone.encode_image(pixels))
