"""The prior's denoising network: a causal transformer over
[text tokens, text embedding, time, noisy image embedding, learned query]."""

from __future__ import annotations

import torch
from torch import nn

from .config import PriorConfig
from .layers import (
    CausalAttention,
    GainLayerNorm,
    RelativePositionBias,
    RotaryEmbedding,
    feed_forward,
)


class CausalTransformer(nn.Module):
    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        dim = config.dim
        self.init_norm = GainLayerNorm(dim) if config.norm_in else nn.Identity()
        self.rel_pos_bias = RelativePositionBias(heads=config.heads)
        rotary = RotaryEmbedding(min(32, config.dim_head)) if config.rotary_emb else None
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    CausalAttention(
                        dim, config.dim_head, config.heads, config.attn_dropout, rotary
                    ),
                    feed_forward(dim, config.ff_mult, config.ff_dropout, config.normformer),
                ]
            )
            for _ in range(config.depth)
        )
        self.norm = GainLayerNorm(dim, stable=True) if config.norm_out else nn.Identity()
        self.project_out = nn.Linear(dim, dim, bias=False) if config.final_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.init_norm(x)
        bias = self.rel_pos_bias(x.shape[1], x.shape[1] + 1, x.device)
        for attention, ff in self.layers:
            x = attention(x, attn_bias=bias) + x
            x = ff(x) + x
        return self.project_out(self.norm(x))


class PriorNetwork(nn.Module):
    """Predicts the clean (scaled) image embedding from a noisy one (DiffusionPriorNetwork)."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        dim = config.dim
        self.config = config
        self.to_text_embeds = _expand(dim, config.num_text_embeds)
        self.to_time_embeds = nn.Sequential(
            nn.Embedding(config.num_timesteps, dim * config.num_time_embeds)
        )
        self.to_image_embeds = _expand(dim, config.num_image_embeds)
        self.learned_query = nn.Parameter(torch.randn(dim))
        self.causal_transformer = CausalTransformer(config)
        self.null_text_encodings = nn.Parameter(torch.randn(1, config.max_text_len, dim))
        self.null_text_embeds = nn.Parameter(torch.randn(1, config.num_text_embeds, dim))
        self.null_image_embed = nn.Parameter(torch.randn(1, dim))

    def forward(
        self,
        image_embed: torch.Tensor,
        times: torch.Tensor,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor | None = None,
        text_cond_drop_prob: float = 0.0,
        image_cond_drop_prob: float = 0.0,
    ) -> torch.Tensor:
        """(B, D) noisy embeddings at (B,) steps -> (B, D) predicted clean embeddings.

        Text encodings are (B, L, D) per-token features, all-zero rows meaning padding; the
        drop probabilities replace conditions by the learned null ones (training only).
        """
        batch, dim = image_embed.shape
        max_len = self.config.max_text_len
        text_keep = _keep_mask(batch, text_cond_drop_prob, image_embed.device)
        image_keep = _keep_mask(batch, image_cond_drop_prob, image_embed.device)
        if text_encodings is None:
            text_encodings = image_embed.new_zeros(batch, 0, dim)
        text_encodings = text_encodings[:, :max_len]
        present = (text_encodings != 0).any(dim=-1)
        padding = max_len - text_encodings.shape[1]
        text_encodings = nn.functional.pad(text_encodings, (0, 0, 0, padding))
        present = nn.functional.pad(present, (0, padding), value=False)
        text_encodings = torch.where(
            present[..., None] & text_keep,
            text_encodings,
            self.null_text_encodings.to(text_encodings.dtype),
        )
        text_tokens = self.to_text_embeds(text_embed).view(batch, -1, dim)
        text_tokens = torch.where(
            text_keep, text_tokens, self.null_text_embeds.to(text_tokens.dtype)
        )
        image_tokens = self.to_image_embeds(image_embed).view(batch, -1, dim)
        image_tokens = torch.where(
            image_keep, image_tokens, self.null_image_embed.to(image_tokens.dtype)
        )
        time_tokens = self.to_time_embeds(times).view(batch, -1, dim)
        query = self.learned_query.expand(batch, 1, dim)
        tokens = torch.cat((text_encodings, text_tokens, time_tokens, image_tokens, query), dim=1)
        return self.causal_transformer(tokens)[:, -1]


def _expand(dim: int, count: int) -> nn.Sequential:
    """dim -> count x dim tokens (a Linear when count > 1, as in the reference)."""
    return nn.Sequential(nn.Linear(dim, dim * count)) if count > 1 else nn.Sequential()


def _keep_mask(batch: int, drop_prob: float, device: torch.device) -> torch.Tensor:
    """(B, 1, 1) True where the condition is kept."""
    if drop_prob <= 0:
        keep = torch.ones(batch, dtype=torch.bool, device=device)
    elif drop_prob >= 1:
        keep = torch.zeros(batch, dtype=torch.bool, device=device)
    else:
        keep = torch.rand(batch, device=device) >= drop_prob
    return keep.view(batch, 1, 1)
