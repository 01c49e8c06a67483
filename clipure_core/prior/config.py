"""Configuration of a latent diffusion prior, in the reference's keyword names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from ..errors import InputError

# Keywords of the reference that only matter for sampling or training; accepted, unused here.
_IGNORED = {
    "sample_timesteps",
    "sampling_clamp_l2norm",
    "sampling_final_clamp_l2norm",
    "training_clamp_l2norm",
    "init_image_embed_l2norm",
    "image_size",
    "image_channels",
    "clip",
    "clip_adapter_overrides",
    "cosine_sim",
    "cosine_sim_scale",
}
# Reference features this implementation does not have; refused rather than ignored.
_UNSUPPORTED = {"self_cond": False, "predict_v": False}


@dataclass(frozen=True)
class PriorConfig:
    """DiffusionPriorNetwork + DiffusionPrior settings (dalle2-pytorch 1.15.6 names)."""

    dim: int
    depth: int
    dim_head: int = 64
    heads: int = 8
    ff_mult: float = 4
    normformer: bool = False
    num_timesteps: int = 1000
    num_time_embeds: int = 1
    num_image_embeds: int = 1
    num_text_embeds: int = 1
    max_text_len: int = 256
    norm_in: bool = False
    norm_out: bool = True
    final_proj: bool = True
    rotary_emb: bool = True
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    timesteps: int = 1000
    beta_schedule: str = "cosine"
    loss_type: str = "l2"
    predict_x_start: bool = True
    condition_on_text_encodings: bool = True
    image_embed_dim: int | None = None
    image_embed_scale: float | None = None
    cond_drop_prob: float = 0.0
    text_cond_drop_prob: float | None = None
    image_cond_drop_prob: float | None = None

    def __post_init__(self) -> None:
        if self.image_embed_dim not in (None, self.dim):
            raise InputError(f"prior image_embed_dim {self.image_embed_dim} != dim {self.dim}.")
        if self.loss_type not in ("l1", "l2", "huber"):
            raise InputError(f"prior loss_type {self.loss_type!r}: use l1, l2 or huber.")

    @property
    def embed_scale(self) -> float:
        return self.image_embed_scale or self.dim**0.5

    @classmethod
    def from_dict(cls, values: dict) -> PriorConfig:
        """Build from reference-style keywords (network and prior settings in one dict)."""
        known = {field.name for field in fields(cls)}
        for key, allowed in _UNSUPPORTED.items():
            if values.get(key, allowed) != allowed:
                raise InputError(f"prior option {key}={values[key]!r} is not supported.")
        unknown = set(values) - known - _IGNORED - set(_UNSUPPORTED)
        if unknown:
            raise InputError(f"unknown prior config keys: {', '.join(sorted(unknown))}.")
        if values.get("num_timesteps") is None:
            raise InputError(
                "prior config needs num_timesteps (the reference's default, None, means "
                "continuous time, which is not supported)."
            )
        return cls(**{key: value for key, value in values.items() if key in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
