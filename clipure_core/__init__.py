"""CLIPure engine: zero-shot CLIP, latent purification (CLIPure-Cos), attacks, one request.

No UI code lives here; the Gradio app and the CLI call these names (the app only these and
those of the subpackages: `clipure_core.purifiers`, `.audit`, `.evaluate`, `.prior`).
"""

from typing import Any

from .attacks import (
    MAX_EOT_SAMPLES,
    MAX_EPS,
    MAX_SQUARE_QUERIES,
    MAX_STEPS,
    METHODS,
    AttackConfig,
    build_attack,
    craft_attack,
)
from .backbone import Backbone, BackboneInfo
from .classifier import DefendedClassifier, ZeroShotClassifier
from .columns import BACKBONE_ALIASES, column_title, home_ref, parse_columns
from .curve import check_curve, robustness_curve
from .defaults import DEFAULT_MODEL, DEFAULT_WEIGHTS
from .errors import InputError, WeightsUnavailableError
from .images import MAX_FILE_BYTES, open_image
from .loading import RANDOM_WEIGHTS, clear_backbone_cache, load_backbone
from .pipeline import Playground, PlaygroundResult
from .pixels import amplified_perturbation
from .prompts import (
    CIFAR10_CLASSNAMES,
    LABEL_PRESETS,
    TEMPLATE_PRESETS,
    Labels,
    null_prompts,
    parse_labels,
    resolve_templates,
)
from .purifiers import CosPurifier, DiffPurifier, Purifier, build_purifier, cos_purify
from .release import ReleaseClassifier
from .text_embeddings import (
    class_prompt_groups,
    measured_rate,
    missing_prompts,
    prompt_group_embeddings,
    text_progress,
)
from .threats import THREATS, attacked_model

# Plot builders import plotly: loaded on first use, so the command line starts without it.
_PLOTS = ("curve_figure", "model_title", "probability_figure", "trajectory_figure")


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKBONE_ALIASES",
    "CIFAR10_CLASSNAMES",
    "DEFAULT_MODEL",
    "DEFAULT_WEIGHTS",
    "LABEL_PRESETS",
    "MAX_EOT_SAMPLES",
    "MAX_EPS",
    "MAX_FILE_BYTES",
    "MAX_SQUARE_QUERIES",
    "MAX_STEPS",
    "METHODS",
    "RANDOM_WEIGHTS",
    "TEMPLATE_PRESETS",
    "THREATS",
    "AttackConfig",
    "Backbone",
    "BackboneInfo",
    "CosPurifier",
    "DefendedClassifier",
    "DiffPurifier",
    "InputError",
    "Labels",
    "Playground",
    "PlaygroundResult",
    "Purifier",
    "ReleaseClassifier",
    "WeightsUnavailableError",
    "ZeroShotClassifier",
    "amplified_perturbation",
    "attacked_model",
    "build_attack",
    "build_purifier",
    "check_curve",
    "class_prompt_groups",
    "clear_backbone_cache",
    "column_title",
    "cos_purify",
    "craft_attack",
    "curve_figure",
    "home_ref",
    "load_backbone",
    "measured_rate",
    "missing_prompts",
    "model_title",
    "null_prompts",
    "open_image",
    "parse_columns",
    "parse_labels",
    "probability_figure",
    "prompt_group_embeddings",
    "resolve_templates",
    "robustness_curve",
    "text_progress",
    "trajectory_figure",
]
