"""Diagnostics of one purification: where the embedding went, step by step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


class TrajectoryRecorder:
    """An `on_step` callback recording, per step and sample: cos to the null prompt,
    cos to the starting embedding, and the top class under the zero-shot classifier."""

    def __init__(
        self, null_embedding: torch.Tensor, class_embeddings: torch.Tensor, labels: Sequence[str]
    ) -> None:
        self.null = F.normalize(null_embedding.detach().float(), dim=-1)
        self.classes = class_embeddings.detach().float()
        self.labels = list(labels)
        self.start: torch.Tensor | None = None
        self.rows: list[dict[str, torch.Tensor]] = []

    def __call__(
        self, step: int, z: torch.Tensor, denoising_loss: torch.Tensor | None = None
    ) -> None:
        unit = F.normalize(z.detach().float(), dim=-1)
        if step == 0:
            self.start = unit
            self.rows = []
        row = {
            "cos_to_null": unit @ self.null,
            "cos_to_start": (unit * self.start).sum(dim=-1),
            "top_class": (unit @ self.classes.T).argmax(dim=-1),
        }
        if denoising_loss is not None:
            row["denoising_loss"] = denoising_loss.detach().float()
        self.rows.append(row)

    def trajectory(self, sample: int = 0) -> list[dict]:
        trajectory = []
        for step, row in enumerate(self.rows):
            entry = {
                "step": step,
                "cos_to_null": float(row["cos_to_null"][sample]),
                "cos_to_start": float(row["cos_to_start"][sample]),
                "top_class": self.labels[int(row["top_class"][sample])],
            }
            if "denoising_loss" in row:
                entry["denoising_loss"] = float(row["denoising_loss"][sample])
            trajectory.append(entry)
        return trajectory

    def angle_moved_deg(self, sample: int = 0) -> float:
        """Angle between the first and the last embedding, in degrees."""
        return _degrees(float(self.rows[-1]["cos_to_start"][sample]))

    def max_angle_deg(self, sample: int = 0) -> float:
        """Largest angle from the start reached on the way, in degrees (CLIPure-Cos with
        step size 30 swings ~88 degrees per step and can end where it started)."""
        return max(_degrees(float(row["cos_to_start"][sample])) for row in self.rows)


def _degrees(cos: float) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))
