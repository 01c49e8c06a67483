"""CLIPure-Diff: ascend the likelihood of a latent diffusion prior with the polar update.

Each step draws a timestep t ~ U{t_min..t_max} and fresh noise per sample, and moves the
unit embedding against the gradient of the prior's denoising loss at (z * scale, t), with the
null prompt as the text condition. The step is random: attacks on it need EOT, and all draws
come from the global torch RNG, which the attack and the pipeline seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ..backbone import Backbone
from ..errors import InputError
from ..prior import LatentPrior, cached_prior, null_condition, prior_for, priors_dir
from .base import BATCH_COUPLED, STEP_SIZE, STEPS, Purifier, Setting, StepCallback
from .polar import polar_step

PRIOR = Setting(
    "prior",
    "prior",
    None,
    "prior checkpoint (default: the one found for the model)",
    advanced=True,
    flag="--prior",
)
T_MIN = Setting("t_min", "lowest timestep", 900, "", minimum=0, advanced=True)
T_MAX = Setting("t_max", "highest timestep", 999, "", minimum=0, advanced=True)
TEXT_ENCODINGS = Setting(
    "text_encodings",
    "text encodings",
    "tokens",
    "per-token encodings, or the pooled embedding at every position (reference)",
    choices=("tokens", "pooled"),
    advanced=True,
)
COND_DROP_PROB = Setting(
    "cond_drop_prob",
    "condition drop probability",
    0.0,
    "the reference still dropped the condition 10 % of the time",
    minimum=0.0,
    maximum=1.0,
    advanced=True,
)


class DiffPurifier(Purifier):
    """CLIPure-Diff with a `LatentPrior` trained on this backbone's image embeddings.

    Reproduction modes of the reference code, off by default: `text_encodings="pooled"`
    (pooled text embedding at every token position) and `cond_drop_prob=0.1` (the reference
    still dropped the condition at random 10 % of the time); `batch_coupled` as in Cos.
    """

    name = "clipure_diff"
    stochastic = True  # a random timestep and noise per step
    title = "CLIPure-Diff"
    flag_prefix = "diff"
    settings_spec = (
        STEPS,
        STEP_SIZE,
        PRIOR,
        T_MIN,
        T_MAX,
        TEXT_ENCODINGS,
        COND_DROP_PROB,
        BATCH_COUPLED,
    )

    def __init__(
        self,
        backbone: Backbone,
        templates: str | Sequence[str] = "ensemble",
        prior: LatentPrior | str | None = PRIOR.default,
        steps: int = STEPS.default,
        step_size: float = STEP_SIZE.default,
        t_min: int = T_MIN.default,
        t_max: int = T_MAX.default,
        text_encodings: str = TEXT_ENCODINGS.default,
        cond_drop_prob: float = COND_DROP_PROB.default,
        batch_coupled: bool = BATCH_COUPLED.default,
    ) -> None:
        super().__init__(steps=steps, step_size=step_size)
        self.prior, self.prior_source = self._resolve_prior(backbone, prior)
        timesteps = self.prior.config.timesteps
        if not (
            isinstance(t_min, int) and isinstance(t_max, int) and 0 <= t_min <= t_max < timesteps
        ):
            raise InputError(
                f"CLIPure-Diff timesteps: integers with 0 <= t_min <= t_max < {timesteps}."
            )
        if not isinstance(cond_drop_prob, int | float) or not 0.0 <= cond_drop_prob <= 1.0:
            raise InputError("CLIPure-Diff cond_drop_prob: a probability in [0, 1].")
        self.t_min, self.t_max = t_min, t_max
        self.text_encodings_mode = text_encodings
        self.cond_drop_prob = float(cond_drop_prob)
        self.batch_coupled = bool(batch_coupled)
        uses_tokens = self.prior.config.condition_on_text_encodings
        condition = null_condition(backbone, templates, text_encodings if uses_tokens else "pooled")
        if condition.text_embed.shape[-1] != self.prior.config.dim or (
            self.prior.config.condition_on_text_encodings
            and condition.text_encodings.shape[-1] != self.prior.config.dim
        ):
            raise InputError(
                f"the prior has dimension {self.prior.config.dim}, which does not match this "
                "backbone's text features; use a prior trained for this backbone."
            )
        dtype = next(self.prior.parameters()).dtype
        self.register_buffer("null_embedding", condition.text_embed)
        self.register_buffer("condition_embed", condition.text_embed.to(dtype))
        self.register_buffer("condition_tokens", condition.text_encodings.to(dtype))

    @classmethod
    def unavailable(cls, backbone: Backbone) -> str | None:
        if prior_for(backbone) is None:
            return (
                "needs a diffusion prior over this backbone's image embeddings. Only ViT-L/14 "
                "(OpenAI) has a public one; train one with `python -m clipure_core.train_prior` "
                "and put it in CLIPURE_PRIORS_DIR."
            )
        return None

    @classmethod
    def query_cost(cls, settings: Mapping) -> float:
        """Each query also runs the prior once per purification step."""
        return 1.0 + int(settings.get("steps", STEPS.default))

    @classmethod
    def resolve_settings(cls, backbone: Backbone, settings: dict) -> dict:
        if isinstance(settings.get("prior"), LatentPrior | str):
            return dict(settings)
        return {**settings, "prior": prior_for(backbone)}

    @staticmethod
    def _resolve_prior(
        backbone: Backbone, prior: LatentPrior | str | None
    ) -> tuple[LatentPrior, str]:
        """The prior and where it came from (a checkpoint, or an in-memory module)."""
        if isinstance(prior, LatentPrior):
            return prior, "in-memory LatentPrior"
        checkpoint = prior or prior_for(backbone)
        if checkpoint is None:
            raise InputError(
                f"CLIPure-Diff needs a diffusion prior for {backbone.info.name} "
                f"({backbone.info.pretrained}); none found in {priors_dir()} (set "
                "CLIPURE_PRIORS_DIR) and no public one exists. Train one with "
                "`python -m clipure_core.train_prior`."
            )
        loaded = cached_prior(str(checkpoint), backbone.device, backbone.input_dtype)
        return loaded, str(checkpoint)

    def settings(self) -> dict:
        return {
            "steps": self.steps,
            "step_size": self.step_size,
            "prior": self.prior_source,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "text_encodings": self.text_encodings_mode,
            "cond_drop_prob": self.cond_drop_prob,
            "batch_coupled": self.batch_coupled,
        }

    def denoising_loss(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) loss of unit embeddings z at fresh random timesteps and noise."""
        batch = z.shape[0]
        dtype = self.condition_embed.dtype
        times = torch.randint(self.t_min, self.t_max + 1, (batch,), device=z.device)
        scaled = (z * self.prior.image_embed_scale).to(dtype)
        noise = torch.randn_like(scaled)
        text_embed = self.condition_embed.expand(batch, -1)
        text_tokens = self.condition_tokens.expand(batch, -1, -1)
        return self.prior.denoise_loss(
            scaled,
            times,
            noise,
            text_embed,
            text_tokens,
            reduction="none",
            text_cond_drop_prob=self.cond_drop_prob,
            image_cond_drop_prob=self.cond_drop_prob,
        ).float()

    def purify(
        self, z: torch.Tensor, gradient: str, on_step: StepCallback | None = None
    ) -> torch.Tensor:
        if gradient not in ("full", "paper"):
            raise ValueError("DiffPurifier.purify takes gradient='full' or 'paper'.")
        z = F.normalize(z, dim=-1)  # the reference purifies unit embeddings
        exact = gradient == "full" and z.requires_grad
        for step in range(self.steps):
            with torch.enable_grad():
                point = z if exact else z.detach().requires_grad_(True)
                losses = self.denoising_loss(point)
                (grad,) = torch.autograd.grad(losses.sum(), point, create_graph=exact)
            if on_step is not None:
                on_step(step, z, losses.detach())
            z = polar_step(z, grad, self.step_size, self.batch_coupled)
        if on_step is not None:
            on_step(self.steps, z, None)
        return z
