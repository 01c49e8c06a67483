"""What every latent purifier shares: settings, validation and the BPDA wrapper."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..backbone import Backbone
from ..errors import InputError
from ..prompts import null_prompts, resolve_templates
from ..text_embeddings import prompt_group_embeddings
from .polar import check_gradient_mode

# on_step(step, z, denoising_loss=None): called for z_0 ... z_steps
StepCallback = Callable[..., None]
MAX_PURIFY_STEPS = 1000


@dataclass(frozen=True)
class Setting:
    """One setting of a purifier, as its constructor takes it: the registry from which the
    app builds its defence controls and the CLIs their flags.

    `ui_maximum` narrows a slider (the engine accepts up to `maximum`); `advanced` settings
    are reproduction options: flags only, no control in the app.
    """

    name: str
    title: str
    default: int | float | bool | str | None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    ui_maximum: float | None = None
    choices: tuple[str, ...] = ()
    advanced: bool = False
    flag: str | None = None  # the CLI flag when it is not --{flag_prefix}-{name}

    @property
    def kind(self) -> type:
        """bool, int, float or str: the type of the default (str when it is None)."""
        return str if self.default is None else type(self.default)


STEPS = Setting(
    "steps",
    "steps",
    10,
    "purification steps (0 = off)",
    minimum=0,
    maximum=MAX_PURIFY_STEPS,
    ui_maximum=50,
)
STEP_SIZE = Setting(
    "step_size", "step size", 30.0, "polar step size eta (the paper: 30)", minimum=0.0
)
BATCH_COUPLED = Setting(
    "batch_coupled",
    "batch coupled",
    False,
    "normalise each step by the whole batch's gradient (reference code reproduction)",
    advanced=True,
)


def null_prompt_embedding(backbone: Backbone, templates: str | Sequence[str]) -> torch.Tensor:
    """The (D,) null prompt: the templates with an empty class name, encoded and averaged."""
    prompts = null_prompts(resolve_templates(templates))
    return prompt_group_embeddings(backbone, [prompts])[0]


class Purifier(nn.Module):
    """Maps (B, D) image embeddings to purified ones. Subclasses implement `purify` and hold
    a `null_embedding` buffer (the trajectory's diagnostics measure against it).

    The class is the defence's one description: its registry name, title, CLI flag prefix,
    settings with their defaults (`settings_spec`; the constructor's defaults are those
    Settings' `default`), whether it is random, and what a query through it costs (`query_cost`).
    """

    name: str = ""
    title: str = ""
    flag_prefix: str = ""  # CLI flags: --{flag_prefix}-{setting}, e.g. --cos-steps
    # its output varies between calls on one input: attacks judge their points on fresh draws
    stochastic: bool = False
    settings_spec: tuple[Setting, ...] = (STEPS, STEP_SIZE)

    def __init__(self, steps: int, step_size: float) -> None:
        super().__init__()
        valid_steps = isinstance(steps, int) and not isinstance(steps, bool)
        if not (valid_steps and 0 <= steps <= MAX_PURIFY_STEPS):
            raise InputError(f"{self.title} steps: an integer from 0 to {MAX_PURIFY_STEPS}.")
        if not (isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0):
            raise InputError(f"{self.title} step size: a finite number > 0.")
        self.steps = steps
        self.step_size = float(step_size)
        self.eval()  # inference only (a prior's dropout stays off)

    def settings(self) -> dict:
        """The values the result records: each setting of `settings_spec`, read from the
        attribute of its name (a class storing one under another name overrides this)."""
        return {setting.name: getattr(self, setting.name) for setting in self.settings_spec}

    @classmethod
    def query_cost(cls, settings: Mapping) -> float:
        """A model query through this defence, in image-encoder queries (a GPU lease's
        unit); latent steps as CLIPure-Cos's cost next to nothing."""
        return 1.0

    @classmethod
    def unavailable(cls, backbone: Backbone) -> str | None:
        """Why this defence cannot run on `backbone` (None when it can)."""
        return None

    @classmethod
    def resolve_settings(cls, backbone: Backbone, settings: dict) -> dict:
        """Settings with every default that depends on the environment made explicit (so that
        a cached purifier is reused only for the same effective settings)."""
        return dict(settings)

    def purify(
        self, z: torch.Tensor, gradient: str, on_step: StepCallback | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, z: torch.Tensor, gradient: str = "full", on_step: StepCallback | None = None
    ) -> torch.Tensor:
        """Purify `z`; with gradient="bpda" the backward pass treats purification as identity."""
        check_gradient_mode(gradient)
        if gradient == "bpda":
            purified = self._checked(z, self.purify(z.detach(), "paper", on_step)).detach()
            return z + (purified - z.detach())
        return self._checked(z, self.purify(z, gradient, on_step))

    def _checked(self, z: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
        """`purified`, refused (InputError) unless it is one finite embedding per input: a NaN
        score would otherwise pass for the first label (every comparison with NaN is false)."""
        name = self.title or type(self).__name__
        if purified.shape != z.shape:
            raise InputError(
                f"defence {name}: its purify returned shape {tuple(purified.shape)} for "
                f"embeddings of shape {tuple(z.shape)}; a defence must return one embedding of "
                "the same size per input."
            )
        if not bool(torch.isfinite(purified).all()):
            raise InputError(
                f"defence {name}: its purify returned NaN or infinite values; a defence must "
                "return finite embeddings."
            )
        return purified
