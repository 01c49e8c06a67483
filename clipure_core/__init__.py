"""CLIPure engine: zero-shot CLIP, latent purification (CLIPure-Cos), attacks, one request.

No UI code lives here; the Gradio app and the CLI call these names.
"""

from .attacks import METHODS, AttackConfig, build_attack, craft_attack
from .backbone import Backbone, BackboneInfo
from .classifier import DefendedClassifier, ZeroShotClassifier
from .errors import InputError, WeightsUnavailableError
from .loading import clear_backbone_cache, load_backbone
from .pipeline import Playground, PlaygroundResult
from .prompts import LABEL_PRESETS, TEMPLATE_PRESETS, parse_labels, resolve_templates
from .purifiers import CosPurifier, DiffPurifier, Purifier, build_purifier, cos_purify
from .release import ReleaseClassifier
from .threats import THREATS, attacked_model

__all__ = [
    "LABEL_PRESETS",
    "METHODS",
    "TEMPLATE_PRESETS",
    "THREATS",
    "AttackConfig",
    "Backbone",
    "BackboneInfo",
    "CosPurifier",
    "DefendedClassifier",
    "DiffPurifier",
    "InputError",
    "Playground",
    "PlaygroundResult",
    "Purifier",
    "ReleaseClassifier",
    "WeightsUnavailableError",
    "ZeroShotClassifier",
    "attacked_model",
    "build_attack",
    "build_purifier",
    "clear_backbone_cache",
    "cos_purify",
    "craft_attack",
    "load_backbone",
    "parse_labels",
    "resolve_templates",
]
