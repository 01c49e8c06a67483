"""Building blocks of the DALL-E 2 prior's causal transformer (dalle2-pytorch 1.15.6 layout).

Module and parameter names follow the reference so that its checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GainLayerNorm(nn.Module):
    """Layer norm with a gain and no bias; `stable` divides by the row maximum first."""

    def __init__(
        self, dim: int, eps: float = 1e-5, fp16_eps: float = 1e-3, stable: bool = False
    ) -> None:
        super().__init__()
        self.eps, self.fp16_eps, self.stable = eps, fp16_eps, stable
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if x.dtype == torch.float32 else self.fp16_eps
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        var, mean = torch.var_mean(x, dim=-1, unbiased=False, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the first `dim` features, rotating adjacent pairs."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        exponents = torch.arange(0, dim, 2)[: dim // 2].float() / dim
        self.freqs = nn.Parameter(1.0 / theta**exponents, requires_grad=False)

    def rotate(self, t: torch.Tensor) -> torch.Tensor:
        """Rotate (..., n, d) queries or keys by their position along the second-last axis."""
        positions = torch.arange(t.shape[-2], device=t.device, dtype=t.dtype)
        angles = (positions[:, None].float() * self.freqs.float()).repeat_interleave(2, dim=-1)
        width = angles.shape[-1]
        head, tail = t[..., :width], t[..., width:]
        pairs = head.unflatten(-1, (-1, 2))
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        rotated = head * angles.cos() + swapped * angles.sin()
        return torch.cat((rotated, tail), dim=-1).type(t.dtype)


class RelativePositionBias(nn.Module):
    """T5-style bucketed bias for causal attention (queries look back only)."""

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 128) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, distance: torch.Tensor) -> torch.Tensor:
        """Bucket of each backward distance (query position - key position, clamped at 0)."""
        distance = distance.clamp_min(0)
        exact = self.num_buckets // 2
        log_ratio = torch.log(distance.clamp_min(1).float() / exact)
        scaled = log_ratio / math.log(self.max_distance / exact) * (self.num_buckets - exact)
        far = (exact + scaled.long()).clamp_max(self.num_buckets - 1)
        return torch.where(distance < exact, distance, far)

    def forward(self, queries: int, keys: int, device: torch.device) -> torch.Tensor:
        """(heads, queries, keys) additive attention bias."""
        distance = torch.arange(queries, device=device)[:, None] - torch.arange(keys, device=device)
        return self.relative_attention_bias(self.buckets(distance)).permute(2, 0, 1)


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.silu(gate)


def feed_forward(
    dim: int, mult: float = 4, dropout: float = 0.0, normformer: bool = False
) -> nn.Sequential:
    """Pre-norm SwiGLU feed-forward; `normformer` adds a norm after the activation."""
    inner = int(mult * dim)
    return nn.Sequential(
        GainLayerNorm(dim),
        nn.Linear(dim, inner * 2, bias=False),
        SwiGLU(),
        GainLayerNorm(inner) if normformer else nn.Identity(),
        nn.Dropout(dropout),
        nn.Linear(inner, dim, bias=False),
    )


class CausalAttention(nn.Module):
    """Multi-query causal attention with cosine similarity, a learned null key/value and
    rotary embeddings."""

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        dropout: float = 0.0,
        rotary_emb: RotaryEmbedding | None = None,
        cosine_sim_scale: float = 16,
    ):
        super().__init__()
        self.heads, self.scale = heads, cosine_sim_scale
        self.norm = GainLayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.rotary_emb = rotary_emb
        self.to_out = nn.Sequential(
            nn.Linear(dim_head * heads, dim, bias=False), GainLayerNorm(dim)
        )

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        batch, length = x.shape[:2]
        x = self.norm(x)
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (b, h, n, d)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (b, n, d), shared by all heads
        if self.rotary_emb is not None:
            q, k = self.rotary_emb.rotate(q), self.rotary_emb.rotate(k)
        null_k, null_v = (t.expand(batch, 1, -1) for t in self.null_kv.unbind(dim=-2))
        k, v = torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)
        root_scale = math.sqrt(self.scale)
        q = F.normalize(q, dim=-1) * root_scale
        k = F.normalize(k, dim=-1) * root_scale
        sim = torch.einsum("bhid,bjd->bhij", q, k)
        if attn_bias is not None:
            sim = sim + attn_bias
        # Query i sees the null key and keys 0..i (key index j <= i + 1).
        future = torch.ones(length, length + 1, dtype=torch.bool, device=x.device).triu(2)
        sim = sim.masked_fill(future, -torch.finfo(sim.dtype).max)
        attn = self.dropout(sim.softmax(dim=-1, dtype=torch.float32).type(sim.dtype))
        out = torch.einsum("bhij,bjd->bhid", attn, v)
        return self.to_out(out.transpose(1, 2).flatten(2))
