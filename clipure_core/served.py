"""A request's columns made into models: each one's backbone, zero-shot head and purifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .backbone import Backbone
from .classifier import ZeroShotClassifier
from .columns import UNDEFENDED, Column
from .purifiers import Purifier
from .threats import attacked_model


@dataclass
class ServedModel:
    """One column of a request, ready to run: its classifier (on its own backbone, with the
    text embeddings of that backbone) and its purifier (None: undefended)."""

    column: Column
    classifier: ZeroShotClassifier
    purifier: Purifier | None

    @property
    def name(self) -> str:
        return self.column.name

    @property
    def backbone(self) -> Backbone:
        return self.classifier.backbone

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings of (B, 3, H, W) pixels of any size, resized to this backbone's input
        as its preprocessing would (model-size pixels pass unchanged)."""
        return self.backbone.encode_image(self.backbone.to_model_size(pixels))

    def attacked(
        self,
        threat: str,
        pixels: torch.Tensor,
        resize_input: bool = False,
        release_precision: str | None = None,
    ) -> nn.Module:
        """The module an attack under `threat` differentiates, taking `pixels`' size
        (resized inside when it is not this backbone's input size, or `resize_input`);
        `release_precision` as attacked_model's."""
        size = self.backbone.image_size
        resize = resize_input or tuple(pixels.shape[-2:]) != (size, size)
        return attacked_model(
            self.classifier,
            self.purifier,
            threat,
            resize_input=resize,
            release_precision=release_precision,
        )

    def describe(self) -> dict:
        """The column's JSON entry: its defence and the backbone it ran on."""
        info = self.backbone.info
        parameters = sum(p.numel() * p.element_size() for p in self.backbone.parameters())
        return {
            "defense": self.column.defense or "none",
            "backbone": {
                "spec": self.column.backbone.spec if self.column.backbone else None,
                "model": info.name,
                "pretrained": info.pretrained,
                "weights_id": info.weights_id,
                "memory_mb": round(parameters / 2**20, 1),
            },
        }


def serve_columns(
    playground,  # Playground (not imported: pipeline imports this module)
    columns: Sequence[Column],
    labels: Sequence[str],
    defense_settings: Mapping[str, Mapping] | None = None,
) -> dict[str, ServedModel]:
    """The undefended start-up model, then every column, by name. Settings are looked up by
    the column's name, then by its defence's name; purifiers are built (and their settings
    checked) before any class text is encoded."""
    settings = defense_settings or {}
    home = Column(UNDEFENDED, None, None)
    purifiers, places = {}, {}
    for column in [home, *columns]:
        place = playground.on_backbone(column.backbone)
        places[column.name] = place
        if column.defense is not None:
            chosen = settings.get(column.name, settings.get(column.defense))
            purifiers[column.name] = place.purifier(column.defense, chosen)
    return {
        column.name: ServedModel(
            column, places[column.name].classifier(labels), purifiers.get(column.name)
        )
        for column in [home, *columns]
    }
