"""The Gaussian diffusion schedule of the prior (cosine betas, as in dalle2-pytorch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021), float64, clipped at 0.999."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return torch.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)


class NoiseSchedule(nn.Module):
    """Schedule constants as float32 buffers, named as in the reference's `NoiseScheduler`
    (they are part of its checkpoints)."""

    def __init__(self, timesteps: int = 1000, beta_schedule: str = "cosine") -> None:
        super().__init__()
        if beta_schedule != "cosine":
            raise ValueError(f"beta_schedule {beta_schedule!r}: only 'cosine' is implemented.")
        betas = cosine_beta_schedule(timesteps)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        previous = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
        constants = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": previous,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
            "posterior_mean_coef1": betas * previous.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - previous)
            * (1.0 - betas).sqrt()
            / (1.0 - alphas_cumprod),
            "p2_loss_weight": torch.ones_like(betas),  # no p2 reweighting
        }
        for name, value in constants.items():
            self.register_buffer(name, value.to(torch.float32))
        self.num_timesteps = timesteps

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, for (B, D) x_0 and (B,) steps t."""
        signal = self.sqrt_alphas_cumprod[t].unsqueeze(-1).to(x_start.dtype)
        spread = self.sqrt_one_minus_alphas_cumprod[t].unsqueeze(-1).to(x_start.dtype)
        return signal * x_start + spread * noise
