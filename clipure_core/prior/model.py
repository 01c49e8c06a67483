"""`LatentPrior`: the DALL-E 2 diffusion prior over CLIP image embeddings (x_0 prediction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PriorConfig
from .network import PriorNetwork
from .schedule import NoiseSchedule

_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss, "huber": F.smooth_l1_loss}


class LatentPrior(nn.Module):
    """`net` denoises scaled embeddings (z * sqrt(dim) for unit z); names as DiffusionPrior."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = config
        self.noise_scheduler = NoiseSchedule(config.timesteps, config.beta_schedule)
        self.net = PriorNetwork(config)

    @property
    def image_embed_scale(self) -> float:
        return self.config.embed_scale

    def denoise_loss(
        self,
        z_scaled: torch.Tensor,
        times: torch.Tensor,
        noise: torch.Tensor,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor | None = None,
        *,
        reduction: str = "mean",
        text_cond_drop_prob: float = 0.0,
        image_cond_drop_prob: float = 0.0,
    ) -> torch.Tensor:
        """The training loss at steps `times` with the given noise (reference `p_losses`).

        reduction="mean" gives the reference's scalar; "none" gives one value per sample.
        """
        noisy = self.noise_scheduler.q_sample(z_scaled, times, noise)
        if not self.config.condition_on_text_encodings:
            text_encodings = None
        prediction = self.net(
            noisy, times, text_embed, text_encodings, text_cond_drop_prob, image_cond_drop_prob
        )
        target = z_scaled if self.config.predict_x_start else noise
        losses = _LOSSES[self.config.loss_type](prediction, target, reduction="none").mean(dim=-1)
        return losses.mean() if reduction == "mean" else losses
